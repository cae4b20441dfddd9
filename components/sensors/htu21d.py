"""HTU21D (or SHT21, Si7021) temperature and humidity sensor on I2C, every result CRC-checked.

Wiring: VIN 3.3 V, GND, SDA and SCL to the bus of an `.machine.i2c` component; address 0x40.

Example (hjson):
    climate: {
        package: .sensors.htu21d
        component: HTU21D
        constructor_args: {
            i2c: "i2c"                  # the I2C bus component, loaded before
            # address: 0x40
            # interval: 30            # seconds between readings (default: the device's INTERVAL)
            # publish_interval: 300   # seconds between publishes (default: interval)
            # precision: { temperature: 1, humidity: 0 }
            # offset: { temperature: -0.4 }
            # window: 5               # publish the average of the last 5 readings
            # delta: 0.5              # publish at once when a value moves by 0.5
            # throttle: 10            # but at most every 10 s
        }
    }

State: `{"temperature": 21.4, "humidity": 48.2}`, QoS 0, retained. A reading whose CRC does not
match, or a chip that does not answer, gives None: logged at error, nothing published.
"""

import asyncio

from micropython import const

from components.machine.i2c import bus
from components.sensors.filters import FilteredSensor

__version__ = "1.0.0"

_MEASURE_T = const(0xF3)  # no-hold master: the bus stays free during the conversion
_MEASURE_RH = const(0xF5)
_T_MS = const(50)  # datasheet maximum conversion times at 14 and 12 bits
_RH_MS = const(16)


def crc(data):
    """CRC-8 of the HTU21D: polynomial x^8+x^5+x^4+1 (0x31), initial value 0, MSB first."""
    c = 0
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c << 1 ^ 0x31) & 0xFF if c & 0x80 else c << 1 & 0xFF
    return c


def convert(buf):
    """Temperature (°C) or relative humidity (%) from a 3-byte result; ValueError on a CRC mismatch."""
    if crc(buf[0:2]) != buf[2]:
        raise ValueError("CRC mismatch (%02x%02x %02x)" % (buf[0], buf[1], buf[2]))
    raw = (buf[0] << 8 | buf[1]) & 0xFFFC
    if buf[1] & 2:
        return -6 + 125 * raw / 65536
    return -46.85 + 175.72 * raw / 65536


class HTU21D(FilteredSensor):
    __version__ = __version__  # what the loader reports in info
    VALUES = (("temperature", "°C", "temperature"), ("humidity", "%", "humidity"))

    def __init__(self, name,
                 i2c,  # type: I2C
                 address=0x40, **kwargs):
        self._bus = bus(i2c)
        self._addr = address
        self._buf = bytearray(3)
        self._cmd = bytearray(1)
        FilteredSensor.__init__(self, name, **kwargs)

    async def _measure(self, cmd, ms):
        self._cmd[0] = cmd
        try:
            self._bus.writeto(self._addr, self._cmd)
            await asyncio.sleep_ms(ms)
            self._bus.readfrom_into(self._addr, self._buf)
        except OSError as e:
            raise OSError("no answer at 0x%02x (%s)" % (self._addr, e))
        return convert(self._buf)

    async def _read(self):
        t = await self._measure(_MEASURE_T, _T_MS)
        h = await self._measure(_MEASURE_RH, _RH_MS)
        return t, min(max(h, 0.0), 100.0)  # the datasheet's formula overshoots near the ends
