# A software watchdog: if the event loop stops feeding it for WATCHDOG seconds (a task blocked the loop,
# a deadlock), the node resets. A machine.Timer counts on a board; a thread counts on the unix port, where
# a reset is the end of the VM process (`fleet node run` starts it again).
import pysmartnode

_count = 0
_limit = 0


def feed():
    global _count
    _count = 0


def _tick(_=None):
    global _count
    _count += 1
    if _limit and _count > _limit:
        print("[critical] watchdog: event loop stalled for %d s, resetting" % _limit)
        if pysmartnode.VIRTUAL:
            import os
            os.system("kill -9 $PPID")  # the VM's process is this shell's parent
        else:
            import machine
            machine.reset()


def _thread_main():
    import time
    while True:
        time.sleep(1)
        _tick()


def start(seconds):
    global _limit
    _limit = seconds
    if not seconds:
        return
    if pysmartnode.VIRTUAL:
        import _thread
        _thread.start_new_thread(_thread_main, ())
    else:
        import machine
        machine.Timer(-1 if pysmartnode.platform == "esp8266" else 0).init(
            period=1000, mode=machine.Timer.PERIODIC, callback=_tick)
