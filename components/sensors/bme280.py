"""Bosch BME280 temperature, humidity and pressure sensor on I2C, with the datasheet's compensation.

Wiring: VIN 3.3 V, GND, SDA and SCL to the bus of an `.machine.i2c` component; SDO to GND gives
address 0x76, to 3.3 V 0x77. (A BMP280 has no humidity: use a BME280.)

Example (hjson):
    outside: {
        package: .sensors.bme280
        component: BME280
        constructor_args: {
            i2c: "i2c"                  # the I2C bus component, loaded before
            # address: 0x76
            # interval: 60            # seconds between readings (default: the device's INTERVAL)
            # precision: { temperature: 1, humidity: 0, pressure: 1 }
            # offset: { pressure: 12.5 }   # hPa, e.g. to sea level
            # window: 1  delta: null  throttle: null   # filters, as for every sensor
        }
    }

State: `{"temperature": 21.4, "humidity": 48.2, "pressure": 1013.2}` (°C, %, hPa), QoS 0, retained.
Each reading is one forced-mode measurement (oversampling x1, filter off: the datasheet's weather
monitoring setting). Data registers still at their reset value (0x80000, "skipped"), a wrong chip id
or a chip that does not answer give None: logged at error, nothing published.
"""

import asyncio
import struct

from micropython import const

from components.machine.i2c import bus
from components.sensors.filters import FilteredSensor

__version__ = "1.0.0"

_CHIP_ID = const(0x60)
_REG_ID = const(0xD0)
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_DATA = const(0xF7)
_FORCED = b"\x25"  # ctrl_meas: temperature x1, pressure x1, forced mode
_HUM_X1 = b"\x01"  # ctrl_hum: humidity x1; takes effect with the next ctrl_meas write


def trimming(a, b):
    """The 18 trimming parameters T1-T3, P1-P9, H1-H6 from registers 0x88-0xA1 (`a`) and 0xE1-0xE7 (`b`)."""
    t = struct.unpack("<HhhHhhhhhhhh", a[0:24])
    h4 = b[3] << 4 | b[4] & 0x0F
    h5 = b[5] << 4 | b[4] >> 4
    h4 -= h4 >> 11 << 12  # 12-bit two's complement
    h5 -= h5 >> 11 << 12
    return t + (a[25], struct.unpack("<h", b[0:2])[0], b[2], h4, h5, b[6] - (b[6] >> 7 << 8))


def compensate(trim, adc_t, adc_p, adc_h):
    """Datasheet section 4.2.3, integer arithmetic: (°C x100, Pa x256, %RH x1024)."""
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6 = trim
    v1 = ((adc_t >> 3) - (t1 << 1)) * t2 >> 11
    v2 = (((adc_t >> 4) - t1) * ((adc_t >> 4) - t1) >> 12) * t3 >> 14
    t_fine = v1 + v2
    t = (t_fine * 5 + 128) >> 8
    # pressure, the 64-bit variant
    v1 = t_fine - 128000
    v2 = v1 * v1 * p6 + (v1 * p5 << 17) + (p4 << 35)
    v1 = ((v1 * v1 * p3) >> 8) + (v1 * p2 << 12)
    v1 = ((1 << 47) + v1) * p1 >> 33
    if v1 == 0:
        p = 0  # the datasheet's guard against a division by zero
    else:
        p = 1048576 - adc_p
        p = (((p << 31) - v2) * 3125) // v1
        v1 = p9 * (p >> 13) * (p >> 13) >> 25
        v2 = p8 * p >> 19
        p = ((p + v1 + v2) >> 8) + (p7 << 4)
    # humidity
    v = t_fine - 76800
    v = ((((adc_h << 14) - (h4 << 20) - h5 * v) + 16384) >> 15) * \
        (((((((v * h6) >> 10) * (((v * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192) >> 14)
    v -= ((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4
    v = 0 if v < 0 else 419430400 if v > 419430400 else v
    return t, p, v >> 12


class BME280(FilteredSensor):
    __version__ = __version__  # what the loader reports in info
    VALUES = (("temperature", "°C", "temperature"), ("humidity", "%", "humidity"),
              ("pressure", "hPa", "pressure"))

    def __init__(self, name,
                 i2c,  # type: I2C
                 address=0x76, **kwargs):
        self._bus = bus(i2c)
        self._addr = address
        self._trim = None  # read on the first good contact, so a chip plugged in later works
        self._data = bytearray(8)
        FilteredSensor.__init__(self, name, **kwargs)

    def _reg(self, reg, n):
        return self._bus.readfrom_mem(self._addr, reg, n)

    def _setup(self):
        cid = self._reg(_REG_ID, 1)[0]
        if cid != _CHIP_ID:
            raise ValueError("chip id 0x%02x at 0x%02x is not a BME280 (0x60)" % (cid, self._addr))
        self._trim = trimming(self._reg(0x88, 26), self._reg(0xE1, 7))

    async def _read(self):
        try:
            if self._trim is None:
                self._setup()
            b, a = self._bus, self._addr
            b.writeto_mem(a, _REG_CTRL_HUM, _HUM_X1)
            b.writeto_mem(a, _REG_CTRL_MEAS, _FORCED)
            await asyncio.sleep_ms(10)  # 9.3 ms at most for x1/x1/x1 (datasheet 9.1)
            for _ in range(10):
                if not self._reg(_REG_STATUS, 1)[0] & 0x08:
                    break
                await asyncio.sleep_ms(2)
            b.readfrom_mem_into(a, _REG_DATA, self._data)
        except OSError as e:
            self._trim = None  # it may have been replaced or reset: read the trimming again
            raise OSError("no answer at 0x%02x (%s)" % (self._addr, e))
        d = self._data
        adc_p = d[0] << 12 | d[1] << 4 | d[2] >> 4
        adc_t = d[3] << 12 | d[4] << 4 | d[5] >> 4
        adc_h = d[6] << 8 | d[7]
        if adc_t == 0x80000 or adc_p == 0x80000 or adc_h == 0x8000:
            self._trim = None
            raise ValueError("data registers hold their reset value: no measurement was made")
        t, p, h = compensate(self._trim, adc_t, adc_p, adc_h)
        return t / 100, h / 1024, p / 25600
