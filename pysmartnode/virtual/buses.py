# Virtual buses for the unix port: I2C and SoftI2C (machine API), OneWire (onewire.OneWire API) and DHT
# (dht API), answering from the chip models registered in pysmartnode.virtual.
from pysmartnode import virtual as _v
from pysmartnode.virtual.parts import Pin, crc8


def _dev(addr):
    m = _v.model("i2c", addr)
    if m is None:
        raise OSError(19)  # ENODEV: no device acknowledged the address, as on an ESP32
    return m


class I2C:
    """A virtual bus; every bus sees every model registered with kind "i2c"."""

    def __init__(self, id=0, scl=None, sda=None, freq=400000):
        self.freq = freq

    def scan(self):
        return sorted(k for k, m in _v.on_bus("i2c") if m.inputs.get("fail") != "nack")

    def writeto(self, addr, buf, stop=True):
        _dev(addr).write(bytes(buf))
        return len(buf)

    def readfrom(self, addr, n, stop=True):
        return bytes(_dev(addr).read(n))

    def readfrom_into(self, addr, buf, stop=True):
        buf[:] = _dev(addr).read(len(buf))

    def readfrom_mem(self, addr, reg, n, addrsize=8):
        return bytes(_dev(addr).read_mem(reg, n))

    def readfrom_mem_into(self, addr, reg, buf, addrsize=8):
        buf[:] = _dev(addr).read_mem(reg, len(buf))

    def writeto_mem(self, addr, reg, buf, addrsize=8):
        _dev(addr).write_mem(reg, bytes(buf))


class SoftI2C(I2C):
    def __init__(self, scl=None, sda=None, freq=400000, timeout=50000):
        I2C.__init__(self, -1, scl, sda, freq)


class OneWire:
    """A virtual one-wire bus on a pin, API of MicroPython's `onewire.OneWire`. After `reset()` the first
    byte is a ROM command: SKIP_ROM (0xCC) addresses every model on the bus, MATCH_ROM (0x55) + 8 ROM bytes
    one model; later bytes go to the addressed models' `write`, reads come from the one addressed model."""

    SEARCH_ROM = 0xF0
    MATCH_ROM = 0x55
    SKIP_ROM = 0xCC

    def __init__(self, pin):
        self.pin = pin.id if isinstance(pin, Pin) else pin
        self._sel = ()
        self._rom = None  # bytearray while a MATCH_ROM collects its 8 bytes

    def _devs(self):
        return [(k, m) for k, m in _v.on_bus("onewire")
                if getattr(m, "pin", None) in (None, self.pin) and m.inputs.get("fail") != "nack"]

    def reset(self, required=False):
        self._sel = None
        self._rom = None
        present = bool(self._devs())
        if required and not present:
            raise OSError(19)
        for _, m in self._devs():
            m.reset()
        return present

    def writebyte(self, b):
        self.write(bytes((b,)))

    def write(self, buf):
        for i, b in enumerate(buf):
            if self._rom is not None:
                self._rom.append(b)
                if len(self._rom) == 8:
                    self._sel = [m for k, m in self._devs() if k == bytes(self._rom)]
                    self._rom = None
            elif self._sel is None:
                if b == self.SKIP_ROM:
                    self._sel = [m for _, m in self._devs()]
                elif b == self.MATCH_ROM:
                    self._rom = bytearray()
                else:
                    self._sel = []
            else:
                rest = bytes(buf[i:])
                for m in self._sel:
                    m.write(rest)
                return

    def writebit(self, v):
        pass

    def readbit(self):
        return 1  # an idle bus (and a finished conversion) reads 1

    def readbyte(self):
        return self.read(1)[0]

    def read(self, n):
        if self._sel and len(self._sel) == 1:
            return bytes(self._sel[0].read(n))
        return b"\xff" * n  # nobody drives the bus: it floats high

    def readinto(self, buf):
        buf[:] = self.read(len(buf))

    def select_rom(self, rom):
        self.reset()
        self.writebyte(self.MATCH_ROM)
        self.write(rom)

    def scan(self):
        return [bytearray(k) for k, _ in self._devs()]

    def crc8(self, data):
        return crc8(data)


class DHT:
    """A virtual DHT11/DHT22: `measure()` asks the model registered as ("dht", pin)."""

    def __init__(self, pin, kind="dht22"):
        self.pin = pin.id if isinstance(pin, Pin) else pin
        self._t = self._h = None

    def measure(self):
        m = _v.model("dht", self.pin)
        if m is None:
            raise OSError(110)  # ETIMEDOUT: no sensor answered, as the dht driver reports
        self._t, self._h = m.measure()

    def temperature(self):
        return self._t

    def humidity(self):
        return self._h
