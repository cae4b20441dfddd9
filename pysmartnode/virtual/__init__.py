# Virtual hardware for the unix port: the state that the virtual parts share, the chip-model registry, and
# the link to `<home>/_sim/<id>/...` (docs/PROTOCOL.md section 8). The node wires the link: it feeds inputs
# in with `sim_input()` and runs `pump()` to publish output levels. Nothing here imports MQTT.
import json
import asyncio

_models = {}  # (bus kind, key) -> model; key: i2c address int, one-wire ROM bytes, dht pin int
_by_name = {}  # model name -> model, for `_sim/<id>/<model>/set`
levels = {}  # pin number -> level (0/1) of every virtual pin, outputs and driven inputs
irqs = {}  # pin number -> (handler, trigger, pin object)
adcs = {}  # adc number -> raw reading 0-65535
_out = {}  # "<part>/<name>" -> payload waiting to be published (latest wins: the topics are retained)
_ev = asyncio.Event()


class Model:
    """Base of a virtual chip. `inputs` holds what a test drives on `_sim/<id>/<name>/set` (JSON object):
    the physical values (`temperature`, …) and `fail`: None, "nack" (the chip stops answering) or "crc"
    (it answers with a corrupted checksum). Subclasses set `defaults` and implement, by bus:
      i2c:     write(buf), read(n) -> bytes, read_mem(reg, n) -> bytes, write_mem(reg, buf)
      onewire: reset(), write(buf), read(n) -> bytes   (bytes after ROM selection; see parts.OneWire)
      dht:     measure() -> (temperature, humidity)
    A model raises OSError(19) (ENODEV) where the real chip would not acknowledge."""

    defaults = {}

    def __init__(self, opts=None):
        self.name = None  # set by register_model
        self.inputs = {"fail": None}
        self.inputs.update(self.defaults)
        if opts:
            self.set_inputs({k: v for k, v in opts.items() if k in self.inputs})

    def set_inputs(self, d):
        if not isinstance(d, dict):
            raise ValueError("inputs must be a JSON object")
        for k in d:
            if k not in self.inputs:
                raise ValueError("unknown input %r (known: %s)" % (k, ", ".join(sorted(self.inputs))))
        if d.get("fail") not in (None, "nack", "crc"):
            raise ValueError("fail must be null, nack or crc")
        self.inputs.update(d)

    def nack(self):
        if self.inputs["fail"] == "nack":
            raise OSError(19)  # ENODEV, as machine.I2C raises when a device does not acknowledge


def _key(kind, key):
    if kind == "onewire" and isinstance(key, str):
        import binascii
        return bytes(binascii.unhexlify(key))
    if kind == "onewire":
        return bytes(key)
    if isinstance(key, str):
        return int(key, 0)
    return key


def register_model(kind, key, model):
    """Put `model` on a virtual bus: `kind` "i2c" (key: address), "onewire" (key: ROM, 8 bytes or 16 hex
    digits) or "dht" (key: pin). Its sim name becomes e.g. `htu21d-0x40`, `ds18b20-28ff…`, `dht22-pin5`."""
    key = _key(kind, key)
    base = getattr(model, "kind", None) or type(model).__name__.lower()
    if kind == "i2c":
        model.name = "%s-0x%02x" % (base, key)
    elif kind == "onewire":
        import binascii
        model.name = "%s-%s" % (base, binascii.hexlify(key).decode())
    else:
        model.name = "%s-pin%d" % (base, key)
    _models[(kind, key)] = model
    _by_name[model.name] = model
    return model


def model(kind, key):
    return _models.get((kind, _key(kind, key)))


def on_bus(kind):
    """(key, model) of every model on bus `kind` (not `models`: that name is the models package)."""
    return [(k[1], m) for k, m in _models.items() if k[0] == kind]


def load_board(path="board.json"):
    """Place the models a virtual board's `board.json` names (docs/NODE.md): {"models": [{"model":
    "htu21d", "bus": "i2c", "address": "0x40", "temperature": 21.0}, …]}. No file: a board without chips."""
    try:
        with open(path) as f:
            board = json.load(f)
    except OSError:
        return 0
    n = 0
    for entry in board.get("models", ()):
        name = entry["model"]
        mod = __import__(entry.get("module") or "pysmartnode.virtual.models." + name, None, None, ["Model"])
        m = mod.Model(entry)
        m.kind = name
        bus = entry["bus"]
        key = entry["address"] if bus == "i2c" else entry["rom"] if bus == "onewire" else entry["pin"]
        register_model(bus, key, m)
        if bus == "onewire":
            m.pin = entry.get("pin")
        n += 1
    return n


def output(part, name, payload):
    """A virtual output changed: publish `payload` on `_sim/<id>/<part>/<name>` (retained)."""
    _out[part + "/" + name] = payload
    _ev.set()


async def pump(publish):
    """Publish output changes with `await publish(subtopic, payload)`; the node runs this for its lifetime."""
    while True:
        while _out:
            k = next(iter(_out))
            v = _out[k]
            await publish(k, v)  # taken off only once sent: a failed publish is tried again
            if _out.get(k) is v:
                del _out[k]
        _ev.clear()
        if not _out:
            await _ev.wait()


def sim_input(part, payload):
    """Apply an input driven on `_sim/<id>/<part>/set`; ValueError for a malformed payload."""
    if part.startswith("pin") and part[3:].isdigit():
        v = payload.strip()
        if v not in (b"0", b"1"):
            raise ValueError("pin level must be 0 or 1")
        drive(int(part[3:]), int(v))
    elif part.startswith("adc") and part[3:].isdigit():
        v = int(payload)  # ValueError for garbage
        if not 0 <= v <= 65535:
            raise ValueError("adc reading must be 0-65535")
        adcs[int(part[3:])] = v
    elif part in _by_name:
        _by_name[part].set_inputs(json.loads(payload))
    else:
        raise ValueError("no virtual part %r" % part)


def drive(n, level):
    """Drive input pin `n` to `level` from outside, firing its irq on an edge."""
    old = levels.get(n)
    levels[n] = level
    h = irqs.get(n)
    if h and old != level:
        handler, trigger, p = h
        if trigger & (1 if level else 2):  # parts.Pin.IRQ_RISING = 1, IRQ_FALLING = 2
            handler(p)
