"""A template for a new sensor: copy it to components/sensors/<name>.py and adapt `_read`.

This example is a TMP102 temperature sensor (TI, I2C): register 0x00 holds the temperature as a 12-bit
two's complement number, MSB first, 0.0625 °C per step. Most simple I2C sensors read like this.

Wiring: V+ 3.3 V, GND, SDA and SCL to the bus of an `.machine.i2c` component; ADD0 to GND gives 0x48.

Example (hjson):
    desk: {
        package: ".sensors.tmp102"     # where you put the copy; here: _templates.sensor_template
        component: TMP102
        constructor_args: {
            i2c: "i2c"                   # the I2C bus component, loaded before
            # address: 0x48
            # interval: 30  publish_interval: 300  precision: 1  offset: 0
            # window: 1  delta: null  throttle: null
        }
    }

State: the temperature in °C, a number, QoS 0, retained; None (logged, nothing published) when the
chip does not answer.

A sensor lists its values in VALUES (name, unit, Home Assistant device class) and implements `_read`,
returning the raw values in that order or raising (OSError, ValueError) when the reading failed. The
base class does the rest: `async temperature(publish=True)` (and `humidity`, `pressure`, `value(name)`),
offset and precision, the reading loop, the filters, discovery. See component_template.py for how the
constructor declares its arguments.
"""

from micropython import const

from components.machine.i2c import bus
from components.sensors.filters import FilteredSensor

__version__ = "1.0.0"

_REG_TEMP = const(0x00)


class TMP102(FilteredSensor):
    __version__ = __version__  # what the loader reports in info
    VALUES = (("temperature", "°C", "temperature"),)

    def __init__(self, name,
                 i2c,  # type: I2C
                 address=0x48, **kwargs):
        self._bus = bus(i2c)  # TypeError naming the argument when the bus is missing
        self._addr = address
        self._buf = bytearray(2)  # allocated once, not per reading
        FilteredSensor.__init__(self, name, **kwargs)  # last: it starts the reading loop

    async def _read(self):
        try:
            self._bus.readfrom_mem_into(self._addr, _REG_TEMP, self._buf)
        except OSError as e:
            raise OSError("no answer at 0x%02x (%s)" % (self._addr, e))
        raw = (self._buf[0] << 8 | self._buf[1]) >> 4
        return (raw - 4096 if raw & 0x800 else raw) * 0.0625
