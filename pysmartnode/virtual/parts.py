# Virtual parts with MicroPython's `machine` API (Pin, ADC, PWM) for the unix port; the buses (I2C,
# OneWire, DHT) are in virtual.buses, imported when first asked for. Output levels go to
# `_sim/<id>/pin<N>/level`, inputs come from `_sim/<id>/…/set`.
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
        if not isinstance(id, int) or not 0 <= id <= 39:  # as machine.Pin refuses a pin the chip lacks
            raise ValueError("invalid pin %r (the virtual board has GPIO 0-39, as an ESP32)" % (id,))
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
