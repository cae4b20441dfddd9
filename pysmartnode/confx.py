# The configuration exchange with the config server (docs/PROTOCOL.md section 4): requests with back-off,
# pieces written to config.new/ as they come, the check, the acks, and the swap into config/.
import asyncio
import gc
import json
import os
import time
import random
import hashlib
import binascii
import pysmartnode
from pysmartnode import log as _log

_l = _log.get("config")
NEW = "config.new"
CUR = "config"
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
    with open(path) as f:
        return json.load(f)


def counter(v):
    try:
        return int(v.split("-")[0])
    except (AttributeError, ValueError):
        return -1


class Exchange:
    def __init__(self, node):
        self.node = node
        self.pending = False  # a request is wanted
        self.answered = False  # the current request got its answer (unchanged, or a whole set)
        self._rx = None  # the set being received: [v, n, next index, name, file, sha256, hmac inner, last ms]
        self.applied_failed = None

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

    async def _request(self):
        n = self.node
        msg = json.dumps({"v": n.config_version, "platform": pysmartnode.platform,
                          "max": n.settings.config_max, "fw": pysmartnode.__version__})
        await n.publish(n.home + "/config/request/" + n.id, msg, False, 1)

    async def run(self):
        """Ask for the config whenever wanted and retry unanswered requests with back-off; abandon a set
        with a gap. The node runs this for its lifetime."""
        attempt = 0
        while True:
            await asyncio.sleep_ms(200)
            rx = self._rx
            if rx and time.ticks_diff(time.ticks_ms(), rx[7]) > GAP_MS:
                _l.warning("config %s: no piece for %d s after %d of %d, asking again" %
                           (rx[0], GAP_MS // 1000, rx[2], rx[1]))
                self._abandon()
                self.pending = True
            if not self.pending or self._rx or not self.node.client.isconnected():
                continue
            self.pending = False
            self.answered = False
            attempt = 0
            while not self.answered:
                try:
                    await self._request()
                except Exception as e:
                    _l.error("request: %s" % _log.describe(e))
                delay = BACKOFF[min(attempt, len(BACKOFF) - 1)] * (0.8 + 0.4 * random.random())
                attempt += 1
                t0 = time.ticks_ms()
                while not self.answered and (self._rx or time.ticks_diff(time.ticks_ms(), t0) < delay * 1000):
                    await asyncio.sleep_ms(200)
                    if self._rx and time.ticks_diff(time.ticks_ms(), self._rx[7]) > GAP_MS:
                        break  # the outer check abandons it and asks again
                if self._rx:
                    break

    def _abandon(self):
        rx, self._rx = self._rx, None
        if rx and rx[4]:
            rx[4].close()
        rmtree(NEW)
        gc.collect()

    async def piece(self, msg):
        """One message on <home>/<id>/config."""
        nl = msg.find(b"\n")
        head = json.loads(msg[:nl] if nl >= 0 else msg)
        if not isinstance(head, dict) or not isinstance(head.get("v"), str):
            raise ValueError("config piece header must be a JSON object with v")
        v = head["v"]
        if head.get("unchanged"):
            self.answered = True
            _l.debug("config %s unchanged" % v)
            return
        i, n, name = head.get("i"), head.get("n"), head.get("name")
        if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n and isinstance(name, str)):
            raise ValueError("config piece header needs i, n, name")
        if not _safe(name):
            raise ValueError("bad piece name %r" % name)
        rx = self._rx
        if i == 0:
            if rx:
                self._abandon()
            rmtree(NEW)
            os.mkdir(NEW)
            sig = head.get("sig")
            self._rx = rx = [v, n, 0, None, None, hashlib.sha256(), self._hmac_start(v), time.ticks_ms(), sig]
        elif rx is None or rx[0] != v or rx[1] != n or rx[2] != i:
            want = "nothing" if rx is None else "%s %d/%d" % (rx[0], rx[2], rx[1])
            _l.warning("config piece %s %d/%d out of order (expected %s), asking again" % (v, i, n, want))
            self._abandon()
            self.want()
            return
        body = msg[nl + 1:] if nl >= 0 else b""
        if rx[3] != name:
            if rx[4]:
                rx[4].close()
            rx[3] = name
            rx[4] = open(NEW + "/" + name + ".json", "wb")
        rx[4].write(body)
        rx[5].update(body)
        if rx[6]:
            rx[6].update(body)
        rx[2] = i + 1
        rx[7] = time.ticks_ms()
        del msg, body
        if i == n - 1:
            rx[4].close()
            rx[4] = None
            self._rx = None
            self.answered = True
            await self._finish(rx)

    # --- signature hook (PROTOCOL 4.5): HMAC-SHA256 computed piece by piece ------------------------
    def _hmac_start(self, v):
        key = self.node.settings.config_key
        if not key:
            return None
        key = key.encode() if isinstance(key, str) else key
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key + bytes(64 - len(key))
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        inner.update(("%s\n%s\n" % (self.node.id, v)).encode())
        self._okey = bytes(b ^ 0x5C for b in key)
        return inner

    def _signature_errors(self, rx):
        if rx[6] is None:
            return []  # this device has no key: configs are not signed
        sig = rx[8]
        if not isinstance(sig, str) or not sig.startswith("hmac-sha256:"):
            return ["config is not signed and this device has a key"]
        outer = hashlib.sha256(self._okey)
        outer.update(rx[6].digest())
        if binascii.hexlify(outer.digest()).decode() != sig[12:].lower():
            return ["signature does not match"]
        if counter(rx[0]) < counter(self.node.config_version):
            return ["version %s is older than %s in force (replay)" % (rx[0], self.node.config_version)]
        return []

    # --- check, ack, swap --------------------------------------------------------------------------
    async def _finish(self, rx):
        v = rx[0]
        errs = []
        digest = binascii.hexlify(rx[5].digest()).decode()[:8]
        if "-" not in v or v.split("-", 1)[1] != digest:
            errs.append("hash of the assembled config is %s, version says %s" % (digest, v))
        errs += self._signature_errors(rx)
        del rx
        gc.collect()
        if not errs:
            errs = check_dir(NEW)
        if errs:
            rmtree(NEW)
            for e in errs:
                _l.error("config %s refused: %s" % (v, e))
            await self.ack(v, "refused", errors=errs)
            return
        if v == self.node.config_version:
            rmtree(NEW)  # the same config again: nothing to apply
            await self.ack(v, "applied", failed=self.node.failed)
            return
        with open(NEW + "/_version", "w") as f:
            f.write(v)
        with open(NEW + "/_pending", "w") as f:
            f.write(v)
        if exists(CUR):
            os.rename(CUR, OLD)
        os.rename(NEW, CUR)
        rmtree(OLD)
        _l.info("config %s accepted, restarting to apply it" % v)
        await self.ack(v, "accepted")
        await self.node.restart()

    async def ack(self, v, state, **kw):
        d = {"v": v, "state": state}
        d.update(kw)
        await self.node.publish(self.node.home + "/config/ack/" + self.node.id, json.dumps(d), False, 1)

    async def after_boot(self):
        """Once connected after a boot: ack `applied` for a config that a restart just put in force."""
        try:
            with open(CUR + "/_pending") as f:
                v = f.read().strip()
        except OSError:
            return
        if self.node.source == CUR:
            await self.ack(v, "applied", failed=self.node.failed)
            os.remove(CUR + "/_pending")


def _safe(name):
    if not 1 <= len(name) <= 32:
        return False
    for c in name:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c in "_-"):
            return False
    return True


def load_dir(path):
    """The config in `path` (as written from pieces) as (settings dict, components config dict)."""
    order = read_json(path + "/_order.json")
    cfg = {"_order": order}
    if isinstance(order, list):
        for name in order:
            if isinstance(name, str) and _safe(name):
                try:
                    cfg[name] = read_json(path + "/" + name + ".json")
                except OSError:
                    pass  # reported by the check as missing
    try:
        settings = read_json(path + "/_settings.json")
    except OSError:
        settings = {}
    return settings, cfg


def check_dir(path):
    from pysmartnode import loader
    errs = []
    for f in os.listdir(path):
        if f.endswith(".json"):
            try:
                read_json(path + "/" + f)
            except ValueError as e:
                errs.append("%s: does not parse: %s" % (f[:-5], e))
            gc.collect()
    if errs:
        return errs
    if not exists(path + "/_order.json"):
        return ["no _order piece"]
    settings, cfg = load_dir(path)
    if not isinstance(settings, dict):
        errs.append("_settings must be a JSON object")
    errs += loader.check(cfg)
    return errs
