# Receiving a config from the server (docs/PROTOCOL.md 4.3-4.5): each piece's body goes straight to
# config.new/<name>.json, so one piece at most is in RAM; then the hash, the signature, the check, the ack,
# the swap into config.cur/ and the restart. Imported by confx when the first piece arrives.
import gc
import json
import os
import time
import hashlib
import binascii
from pysmartnode import log as _log
from pysmartnode.confx import NEW, CUR, OLD, GAP_MS, exists, rmtree, read_json, dir_spec

_l = _log.get("config")
KEYS = ("package", "component", "constructor_args", "init_function", "init_args",
        "call_function_regularly", "call_interval")
RESERVED = ("set", "status", "info", "cmd", "config")


def counter(v):
    try:
        return int(v.split("-")[0])
    except (AttributeError, ValueError):
        return -1


def valid_name(n):
    if not isinstance(n, str) or not 1 <= len(n) <= 32:
        return False
    for c in n:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c in "_-"):
            return False
    return True


class Receiver:
    def __init__(self, ex):
        self.ex = ex
        self.node = ex.node
        # the set being received: [v, n, next index, name, file, sha256, hmac inner, last ms, sig]
        self.set = None
        self._okey = None

    def stalled(self):
        return time.ticks_diff(time.ticks_ms(), self.set[7]) > GAP_MS

    def abandon(self, why):
        s, self.set = self.set, None
        if s:
            _l.warning("config %s abandoned after %d of %d pieces (%s), asking again" % (s[0], s[2], s[1], why))
            if s[4]:
                s[4].close()
        rmtree(NEW)
        gc.collect()
        self.ex.want()

    async def piece(self, msg):
        """One message on <home>/<id>/config."""
        nl = msg.find(b"\n")
        head = json.loads(msg[:nl] if nl >= 0 else msg)
        if not isinstance(head, dict) or not isinstance(head.get("v"), str):
            raise ValueError("config piece header must be a JSON object with v")
        v = head["v"]
        if head.get("unchanged"):
            self.ex.answered = True
            _l.debug("config %s unchanged" % v)
            return
        i, n, name = head.get("i"), head.get("n"), head.get("name")
        if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n and valid_name(name.lstrip("_"))):
            raise ValueError("config piece header needs i, n and a name")
        s = self.set
        if i == 0:
            if s:
                self.abandon("a new set began")
            rmtree(NEW)
            os.mkdir(NEW)
            self.set = s = [v, n, 0, None, None, hashlib.sha256(), self._hmac_start(v), time.ticks_ms(),
                            head.get("sig")]
        elif s is None or s[0] != v or s[1] != n or s[2] != i:
            if s is not None:
                self.abandon("piece %s %d/%d out of order, expected %d" % (v, i, n, s[2]))
            else:
                _l.warning("config piece %s %d/%d out of order (no set begun), asking again" % (v, i, n))
                self.ex.want()
            return
        body = msg[nl + 1:] if nl >= 0 else b""
        if s[3] != name:
            if s[4]:
                s[4].close()
            s[3] = name
            s[4] = open(NEW + "/" + name + ".json", "wb")
        s[4].write(body)
        s[5].update(body)
        if s[6]:
            s[6].update(body)
        s[2] = i + 1
        s[7] = time.ticks_ms()
        if i == n - 1:
            s[4].close()
            s[4] = None
            self.set = None
            self.ex.answered = True
            del msg, body
            await self._finish(s)

    # --- the signature (PROTOCOL 4.5): HMAC-SHA256, computed piece by piece ------------------------
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

    def _signature_errors(self, s):
        if s[6] is None:
            return []  # this device has no key: its configs are not signed
        sig = s[8]
        if not isinstance(sig, str) or not sig.startswith("hmac-sha256:"):
            return ["config is not signed and this device has a key"]
        outer = hashlib.sha256(self._okey)
        outer.update(s[6].digest())
        if binascii.hexlify(outer.digest()).decode() != sig[12:].lower():
            return ["signature does not match"]
        if counter(s[0]) < counter(self.node.config_version):
            return ["version %s is older than %s in force (replay)" % (s[0], self.node.config_version)]
        return []

    # --- check, ack, swap ------------------------------------------------------------------------
    async def _finish(self, s):
        v = s[0]
        errs = []
        digest = binascii.hexlify(s[5].digest()).decode()[:8]
        if "-" not in v or v.split("-", 1)[1] != digest:
            errs.append("hash of the assembled config is %s, version says %s" % (digest, v))
        errs += self._signature_errors(s)
        del s
        gc.collect()
        if not errs:
            errs = check_dir(NEW)
        ex = self.ex
        if errs:
            rmtree(NEW)
            for e in errs:
                _l.error("config %s refused: %s" % (v, e))
            await ex.ack(v, "refused", errors=errs)
            return
        if v == self.node.config_version:
            rmtree(NEW)  # the same config again (a redelivery, a second push): nothing to apply
            await ex.ack_applied(v)
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
        await ex.ack(v, "accepted")
        await self.node.restart()


def check_dir(path):
    """Every problem of the config written in `path` (empty: it can be applied)."""
    errs = []
    files = os.listdir(path)
    for f in files:
        if f.endswith(".json"):
            try:
                read_json(path + "/" + f)
            except ValueError as e:
                errs.append("%s: does not parse: %s" % (f[:-5], e))
            gc.collect()
    if errs:
        return errs
    if "_order.json" not in files:
        return ["no _order piece"]
    if "_settings.json" in files and not isinstance(read_json(path + "/_settings.json"), dict):
        errs.append("_settings must be a JSON object")
    names = read_json(path + "/_order.json")
    if not isinstance(names, list):
        return errs + ["_order must be a list of component names"]
    for f in files:
        if f[:1] != "_" and f.endswith(".json") and f[:-5] not in names:
            errs.append("%s: not in _order" % f[:-5])
    return errs + check(names, dir_spec(path))


def check(names, get_spec):
    """Every problem of a components config: names in order, `get_spec(name)` each spec; every package
    is imported (one spec in RAM at a time)."""
    from pysmartnode.loader import resolve
    errs = []
    seen = set()
    for n in names:
        if not valid_name(n) or n in RESERVED:
            errs.append("%r: not a valid component name ([a-z0-9_-]{1,32}, not %s)" % (n, "/".join(RESERVED)))
            continue
        if n in seen:
            errs.append("%s: listed twice in _order" % n)
        seen.add(n)
        try:
            spec = get_spec(n)
        except OSError:
            spec = None
        if not isinstance(spec, dict):
            errs.append("%s: missing or not an object" % n)
            continue
        e0 = len(errs)
        for k in spec:
            if k not in KEYS:
                errs.append("%s: unknown key %r" % (n, k))
        for k in ("package", "component"):
            if not isinstance(spec.get(k), str) or not spec.get(k):
                errs.append("%s.%s: required, a string" % (n, k))
        if not isinstance(spec.get("constructor_args", {}), (dict, list)):
            errs.append("%s.constructor_args: must be an object or a list" % n)
        if not isinstance(spec.get("init_args", []), list):
            errs.append("%s.init_args: must be a list" % n)
        ci = spec.get("call_interval", 1)
        if not isinstance(ci, (int, float)) or ci <= 0:
            errs.append("%s.call_interval: must be a number of seconds > 0" % n)
        for k in ("init_function", "call_function_regularly"):
            if k in spec and not isinstance(spec[k], str):
                errs.append("%s.%s: must be a string" % (n, k))
        if len(errs) == e0:
            try:
                resolve(spec)
            except Exception as e:
                errs.append("%s: %s.%s: %s" % (n, spec["package"], spec["component"], _log.describe(e)))
        del spec
        gc.collect()
    return errs
