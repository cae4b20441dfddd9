# The hardware layer: every component reaches pins and buses through these few functions, never through
# `machine` directly, so the same component drives a board's hardware or the virtual hardware of the unix
# port. The objects returned have MicroPython's `machine` API (Pin.value/on/off/irq, I2C.readfrom_mem …).
#
#   from pysmartnode import hw
#   relay = hw.pin(5, hw.OUT, value=0)
#   bus = hw.i2c(scl=5, sda=4)
from pysmartnode import VIRTUAL

if VIRTUAL:
    from pysmartnode.virtual import parts as _m
else:
    import machine as _m

Pin = _m.Pin
IN = _m.Pin.IN
OUT = _m.Pin.OUT
OPEN_DRAIN = _m.Pin.OPEN_DRAIN
PULL_UP = _m.Pin.PULL_UP
PULL_DOWN = getattr(_m.Pin, "PULL_DOWN", None)  # ESP8266 has no pull-down
IRQ_RISING = _m.Pin.IRQ_RISING
IRQ_FALLING = _m.Pin.IRQ_FALLING

_i2c = {}


def pin(n, mode=IN, pull=None, value=None):
    """A GPIO pin: `mode` IN, OUT or OPEN_DRAIN; `pull` PULL_UP/PULL_DOWN/None; `value` the initial output level."""
    if isinstance(n, Pin):
        return n
    if value is None:
        return _m.Pin(n, mode, pull)
    return _m.Pin(n, mode, pull, value=value)


def i2c(bus=0, scl=None, sda=None, freq=400000):
    """An I2C bus. With `scl`/`sda` a software bus on those pins, else hardware bus `bus`. Shared:
    asking twice for the same bus gives the same object."""
    key = (bus, scl, sda)
    b = _i2c.get(key)
    if b is None:
        m = _buses()
        if scl is not None and sda is not None:
            b = m.SoftI2C(scl=pin(scl), sda=pin(sda), freq=freq)
        else:
            b = m.I2C(bus, freq=freq)
        _i2c[key] = b
    return b


def adc(n):
    """An analog input; read it with `read_u16()` (0-65535)."""
    if VIRTUAL or not isinstance(n, int) or n == 0 and _esp8266():
        return _m.ADC(n)
    return _m.ADC(_m.Pin(n))


def pwm(n, freq=1000, duty_u16=0):
    """A PWM output: `duty_u16(0-65535)`, `freq(hz)`, `deinit()`."""
    return _m.PWM(pin(n, OUT), freq=freq, duty_u16=duty_u16)


def onewire(n):
    """A one-wire bus on pin `n`, with the API of MicroPython's `onewire.OneWire`."""
    if VIRTUAL:
        return _buses().OneWire(n)
    import onewire as _ow
    return _ow.OneWire(pin(n))


def dht(n, kind="dht22"):
    """A DHT11/DHT22 sensor on pin `n`: `measure()` then `temperature()`, `humidity()`; OSError on failure."""
    if VIRTUAL:
        return _buses().DHT(n, kind)
    import dht as _dht
    return (_dht.DHT11 if kind == "dht11" else _dht.DHT22)(pin(n))


def _buses():
    if VIRTUAL:  # the virtual buses load only when a component asks for one
        from pysmartnode.virtual import buses
        return buses
    return _m


def _esp8266():
    import sys
    return sys.platform == "esp8266"
