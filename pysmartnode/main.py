# Startup and recovery: the device's main.py calls run(). An uncaught error is logged (and kept in
# last_error.txt for the next boot) and the device resets, unless DEBUG_STOP_AFTER_EXECUTION.
import asyncio
import gc
import sys
import pysmartnode
from pysmartnode import log as _log

_l = _log.get("main")


async def _main(settings):
    # The modules that live as long as the node load first, so they pack together at one end of the
    # heap; what only boot needs loads after them and leaves one hole when it goes (loaded the other
    # way round, a 112K x64 heap ended up with 22 KB free in pieces of at most 400 bytes).
    from pysmartnode.node import Node
    from pysmartnode import component, hw, watchdog  # noqa: F401
    gc.collect()
    from pysmartnode import loader, sources
    _log.debug = bool(settings.debug)
    _log.buffer_len = settings.log_buffer
    node = Node(settings)
    node.config.recover()
    _l.info("pysmartnode %s on %s, id %s, config %s" %
            (pysmartnode.__version__, pysmartnode.platform, node.id, node.config_version))
    try:
        with open("last_error.txt") as f:
            _l.error("reset after: %s" % f.read().strip())
        import os
        os.remove("last_error.txt")
    except OSError:
        pass
    for b in settings.bad:
        _l.error(b)
    if settings.ignored:
        _l.warning("server settings ignored: %s" % ", ".join(settings.ignored))
    if not pysmartnode.VIRTUAL:
        from pysmartnode import net
        asyncio.create_task(net.keep_wifi(settings))  # lives as long as the node
    watchdog.start(settings.watchdog)
    if pysmartnode.VIRTUAL:
        from pysmartnode import virtual
        try:
            n = virtual.load_board()
            if n:
                _l.info("virtual board: %d chip models" % n)
        except Exception as e:  # a broken board.json: the node runs without its chips
            _l.exception(e, "board.json")
    await node.start()
    gc.collect()
    names, spec, node.source = sources.load()
    if names is None:
        if settings.receive_config:
            _l.info("no local config: waiting for the config server")
        else:
            _l.error("no config and RECEIVE_CONFIG is off: nothing to run")
    else:
        _l.info("config from %s" % node.source)
        loader.load(names, spec, node)
        del names, spec
    # what only boot needs goes, so its heap serves the components
    del loader, sources
    for m in ("loader", "sources", "settings"):
        sys.modules.pop("pysmartnode." + m, None)
        if hasattr(pysmartnode, m):
            delattr(pysmartnode, m)
    gc.collect()
    _l.info("running, %d components, heap free %d" % (len(node.objects), gc.mem_free()))
    await node.wait_stopped()
    return node.reset_requested


def reset(crashed=False):
    if pysmartnode.VIRTUAL:
        # node.RESET asks `fleet node run` for a boot at once; after a crash it waits (1 s, doubling)
        sys.exit(1 if crashed else 3)
    import machine
    if crashed:
        import time
        time.sleep(2)  # a node that crashes at boot does not hammer the broker
    machine.reset()


def run():
    from pysmartnode import settings as _settings
    s = _settings.load()
    try:
        if asyncio.run(_main(s)):
            reset()
    except KeyboardInterrupt:
        raise
    except Exception as e:
        _l.exception(e, "uncaught", _log.CRITICAL)
        try:
            with open("last_error.txt", "w") as f:
                f.write(_log.describe(e))
        except OSError:
            pass
        if s.debug_stop_after_execution:
            return
        reset(True)
