# The configuration exchange with the config server (docs/PROTOCOL.md section 4), resident part: requests
# with back-off, the acks, recovery at boot. Receiving and checking pieces lives in confrx, imported when
# the first piece arrives (a node that is current never loads it). The config in force is in config.cur/,
# never config/: a folder named config would shadow the device's config.py on import.
import asyncio
import json
import os
import time
import random
import pysmartnode
from pysmartnode import log as _log

_l = _log.get("config")
NEW = "config.new"
CUR = "config.cur"
OLD = "config.old"
BACKOFF = (5, 10, 20, 40, 80, 160, 300)  # seconds between unanswered requests, ±20 % jitter
GAP_MS = 10000  # a set whose next piece is later than this is abandoned


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def rmtree(path):
    if not exists(path):
        return
    for name in os.listdir(path):
        os.remove(path + "/" + name)
    os.rmdir(path)


def read_json(path):
    """The parsed file; ValueError naming `path:line:col` when it does not parse."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError:
        from pysmartnode.jsonpos import locate
        raise ValueError("%s:%s" % (path, locate(text) or " does not parse"))


def dir_spec(path):
    """A function giving the spec of component `name` from `path/<name>.json`, read when asked (so a
    config of many components is never in RAM at once)."""
    def spec(name):
        return read_json("%s/%s.json" % (path, name))
    return spec


class Exchange:
    def __init__(self, node):
        self.node = node
        self.pending = False  # a request is wanted
        self.answered = False  # the current request got its answer (unchanged, or a whole set)
        self.rx = None  # confrx.Receiver, once a piece arrived
        self.acked = None  # (version, state) of the last ack sent

    def recover(self):
        """At boot: finish or undo a swap that a reset interrupted, drop a half-received set."""
        if not exists(CUR) and exists(OLD):
            os.rename(OLD, CUR)
        rmtree(OLD)
        rmtree(NEW)
        try:
            with open(CUR + "/_version") as f:
                self.node.config_version = f.read().strip()
        except OSError:
            pass

    def want(self):
        self.pending = True

    def _receiving(self):
        return self.rx is not None and self.rx.set is not None

    async def piece(self, msg):
        if self.rx is None:
            from pysmartnode.confrx import Receiver
            self.rx = Receiver(self)
        await self.rx.piece(msg)

    async def _request(self):
        n = self.node
        msg = json.dumps({"v": n.config_version, "platform": pysmartnode.platform,
                          "max": n.settings.config_max, "fw": pysmartnode.__version__})
        await n.publish(n.home + "/config/request/" + n.id, msg, False, 1)

    async def run(self):
        """Ask for the config whenever wanted, retry unanswered requests with back-off, abandon a set with
        a gap. The node runs this for its lifetime."""
        while True:
            await asyncio.sleep_ms(200)
            if self._receiving() and self.rx.stalled():
                self.rx.abandon("no piece for %d s" % (GAP_MS // 1000))
            if not self.pending or self._receiving() or not self.node.client.isconnected():
                continue
            self.pending = False
            self.answered = False
            attempt = 0
            while not self.answered and not self.pending:
                try:
                    await self._request()
                except Exception as e:
                    _l.error("request: %s" % _log.describe(e))
                delay = BACKOFF[min(attempt, len(BACKOFF) - 1)] * (800 + random.getrandbits(9) * 400 // 512)
                attempt += 1
                t0 = time.ticks_ms()
                while not self.answered and not self.pending and \
                        (self._receiving() or time.ticks_diff(time.ticks_ms(), t0) < delay):
                    await asyncio.sleep_ms(200)
                    if self._receiving() and self.rx.stalled():
                        self.rx.abandon("no piece for %d s" % (GAP_MS // 1000))

    async def ack(self, v, state, **kw):
        d = {"v": v, "state": state}
        d.update(kw)
        await self.node.publish(self.node.home + "/config/ack/" + self.node.id, json.dumps(d), False, 1)
        self.acked = (v, state)

    async def after_boot(self):
        """Once connected after a boot: ack `applied` for a config that a restart just put in force."""
        try:
            with open(CUR + "/_pending") as f:
                v = f.read().strip()
        except OSError:
            return
        if self.node.source == CUR:
            await self.ack_applied(v)
            os.remove(CUR + "/_pending")

    async def ack_applied(self, v):
        """`applied` for the config in force, once per boot (a redelivered copy of it says nothing new)."""
        if self.acked != (v, "applied"):
            self.acked = (v, "applied")  # before the await: the router and the link task may both ask
            await self.ack(v, "applied", failed=self.node.failed)
