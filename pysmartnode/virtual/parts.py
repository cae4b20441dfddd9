# Virtual parts with MicroPython's `machine` API (Pin, I2C, SoftI2C, ADC, PWM) plus OneWire and DHT, for
# the unix port. Output levels go to `_sim/<id>/pin<N>/level`, inputs come from `_sim/<id>/…/set`.
from pysmartnode import virtual as _v


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=None, value=None):
        self.id = id
        self.mode = self.IN
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=None, value=None):
        if mode != -1:
            self.mode = mode
        if self.mode == self.IN:
            if self.id not in _v.levels:  # an undriven input reads its pull
                _v.levels[self.id] = 1 if pull == self.PULL_UP else 0
        else:  # an output announces its level as soon as it exists
            v = _v.levels.get(self.id, 0) if value is None else value
            _v.levels[self.id] = 1 if v else 0
            _v.output("pin%d" % self.id, "level", b"1" if v else b"0")

    def value(self, v=None):
        if v is None:
            return _v.levels.get(self.id, 0)
        if self.mode == self.IN:
            return  # writing an input pin only sets its output latch on a board: no visible effect
        v = 1 if v else 0
        if _v.levels.get(self.id) != v:
            _v.levels[self.id] = v
            _v.output("pin%d" % self.id, "level", b"1" if v else b"0")

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3):
        if handler is None:
            _v.irqs.pop(self.id, None)
        else:
            _v.irqs[self.id] = (handler, trigger, self)


class ADC:
    def __init__(self, n, atten=None):
        self.n = n.id if isinstance(n, Pin) else n

    def read_u16(self):
        return _v.adcs.get(self.n, 0)

    def atten(self, a):
        pass


class PWM:
    def __init__(self, pin, freq=1000, duty_u16=0):
        self.n = pin.id
        self._freq = freq
        self._duty = -1
        self.duty_u16(duty_u16)

    def freq(self, f=None):
        if f is None:
            return self._freq
        self._freq = f

    def duty_u16(self, d=None):
        if d is None:
            return self._duty
        d = max(0, min(65535, int(d)))
        if d != self._duty:
            self._duty = d
            _v.output("pwm%d" % self.n, "duty", b"%d" % d)

    def duty(self, d=None):  # the ESP8266's 10-bit API
        if d is None:
            return self._duty >> 6
        self.duty_u16(d * 65535 // 1023)

    def deinit(self):
        self.duty_u16(0)


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


def crc8(data):
    """Dallas/Maxim CRC-8 (as `onewire.OneWire.crc8`): 0 over a block that ends with its own CRC."""
    crc = 0
    for b in data:
        for _ in range(8):
            mix = (crc ^ b) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            b >>= 1
    return crc


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
