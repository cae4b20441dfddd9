# Logging: every line is printed and sent to <home>/log/<level>/<id> (docs/PROTOCOL.md section 3). Lines
# logged while offline wait in a bounded buffer (oldest dropped first, the count reported on reconnect).
import asyncio
import time
import sys

LEVELS = ("debug", "info", "warning", "error", "critical")
DEBUG, INFO, WARNING, ERROR, CRITICAL = 0, 1, 2, 3, 4
debug = False  # DEBUG from the settings: debug lines are kept and sent only when on
synced = sys.platform not in ("esp32", "esp8266", "rp2")  # set by NTP on a board; the unix clock is real
buffer_len = 20  # LOG_BUFFER from the settings
_buf = []  # [level, line] waiting for the link
_dropped = 0
_ev = asyncio.Event()
_t0 = time.ticks_ms()
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0  # boards counting from 2000 give Unix time too


def unix_time():
    return time.time() + _EPOCH


def stamp():
    """ISO 8601 UTC when the clock is synced, else uptime as +123.456s."""
    if synced:
        t = time.gmtime(int(time.time()))
        return "%04d-%02d-%02dT%02d:%02d:%02dZ" % t[:6]
    ms = time.ticks_diff(time.ticks_ms(), _t0)
    return "+%d.%03ds" % (ms // 1000, ms % 1000)


def describe(e):
    """`TypeError: message` for an exception."""
    return "%s: %s" % (type(e).__name__, e)


def write(level, name, msg):
    global _dropped
    if level == DEBUG and not debug:
        return
    try:
        line = "%s %s: %s" % (stamp(), name, msg)
        print("[%s] %s" % (LEVELS[level], line))
        _buf.append((level, line))
    except MemoryError:  # logging never raises: the line is counted as dropped
        _dropped += 1
        return
    if len(_buf) > buffer_len:
        _buf.pop(0)
        _dropped += 1
    _ev.set()


class Logger:
    def __init__(self, name):
        self.name = name

    def debug(self, msg):
        write(DEBUG, self.name, msg)

    def info(self, msg):
        write(INFO, self.name, msg)

    def warning(self, msg):
        write(WARNING, self.name, msg)

    def error(self, msg):
        write(ERROR, self.name, msg)

    def critical(self, msg):
        write(CRITICAL, self.name, msg)

    def exception(self, e, msg="", level=ERROR):
        """Log `e` with its traceback printed locally; the MQTT line carries the last frame."""
        where = ""
        try:
            import io
            s = io.StringIO()
            sys.print_exception(e, s)
            tb = s.getvalue().strip().split("\n")
            print("\n".join(tb))
            where = " (%s)" % tb[-2].strip() if len(tb) > 1 else ""
        except MemoryError:  # the line itself still goes out
            pass
        write(level, self.name, "%s%s%s" % (msg + ": " if msg else "", describe(e), where))


def get(name):
    return Logger(name)


async def pump(client, home, device):
    """Send buffered lines whenever the link is up; the node runs this for its lifetime."""
    global _dropped
    prefix = home + "/log/"
    suffix = "/" + device
    while True:
        _ev.clear()
        if not _buf and not _dropped:
            await _ev.wait()
        await client.wait_connected()
        if _dropped:
            n, _dropped = _dropped, 0
            await client.publish(prefix + "warning" + suffix,
                                 "%s log: %d lines dropped while offline or short of memory" % (stamp(), n))
        while _buf and client.isconnected():
            level, line = _buf[0]
            await client.publish(prefix + LEVELS[level] + suffix, line)
            if _buf and _buf[0][1] is line:
                _buf.pop(0)
        if _buf:
            await asyncio.sleep_ms(100)  # the link went down meanwhile: never spin
