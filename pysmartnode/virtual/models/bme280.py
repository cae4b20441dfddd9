# Bosch BME280 temperature, humidity and pressure sensor, I2C address 0x76 or 0x77 (datasheet rev 1.6).
#
# Registers as the chip has them: trimming parameters at 0x88-0xA1 and 0xE1-0xE7, chip id 0xD0 = 0x60,
# reset 0xE0 (write 0xB6), ctrl_hum 0xF2, status 0xF3 (bit 3 measuring), ctrl_meas 0xF4, config 0xF5,
# data 0xF7-0xFE (pressure and temperature 20 bits, humidity 16 bits; 0x80000 / 0x8000 when skipped).
# A write is a register address followed by (value, address, value …) pairs (so a multi-byte
# writeto_mem lands only its first byte where meant, as on the chip); a read auto-increments.
#
# Raw ADC values are found by searching the datasheet's floating-point compensation (section 8.1) for
# the set point, so the driver's integer compensation (section 4.2.3) is checked against another formula.
# Trimming: the temperature and pressure parameters are the datasheet's worked example, the humidity
# ones those of a real chip. The chip has no checksum: `fail: "crc"` makes its data registers read as
# their reset value (0x80000, the datasheet's "skipped" marker), as after a brown-out.
import struct
import time

from micropython import const

from pysmartnode.virtual.models import I2CModel

_TRIM_TP = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
_H1, _H2, _H3, _H4, _H5, _H6 = 75, 362, 0, 313, 50, 30
_CHIP_ID = const(0x60)
_RESET = const(0xE0)
_CTRL_HUM = const(0xF2)
_STATUS = const(0xF3)
_CTRL_MEAS = const(0xF4)
_DATA = const(0xF7)
_RESET_DATA = b"\x80\x00\x00\x80\x00\x00\x80\x00"
_OSRS = (0, 1, 2, 4, 8, 16, 16, 16)


def _t_fine(adc_t):
    t1, t2, t3 = _TRIM_TP[:3]
    a = (adc_t / 16384.0 - t1 / 1024.0) * t2
    b = adc_t / 131072.0 - t1 / 8192.0
    return a + b * b * t3


def _pressure(adc_p, t_fine):
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = _TRIM_TP[3:]
    v1 = t_fine / 2.0 - 64000.0
    v2 = v1 * v1 * p6 / 32768.0 + v1 * p5 * 2.0
    v2 = v2 / 4.0 + p4 * 65536.0
    v1 = (p3 * v1 * v1 / 524288.0 + p2 * v1) / 524288.0
    v1 = (1.0 + v1 / 32768.0) * p1
    p = (1048576.0 - adc_p - v2 / 4096.0) * 6250.0 / v1
    return p + (p9 * p * p / 2147483648.0 + p * p8 / 32768.0 + p7) / 16.0


def _humidity(adc_h, t_fine):
    v = t_fine - 76800.0
    v = (adc_h - (_H4 * 64.0 + _H5 / 16384.0 * v)) * (
        _H2 / 65536.0 * (1.0 + _H6 / 67108864.0 * v * (1.0 + _H3 / 67108864.0 * v)))
    return v * (1.0 - _H1 * v / 524288.0)


def _solve(f, target, bits, rising):
    """The raw value in [0, 2**bits) whose compensated value is nearest `target`, f monotonic."""
    lo, hi = 0, (1 << bits) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if (f(mid) < target) == rising:
            lo = mid + 1
        else:
            hi = mid
    if lo and abs(f(lo - 1) - target) < abs(f(lo) - target):
        lo -= 1
    return lo


class BME280(I2CModel):
    defaults = {"temperature": 21.0, "humidity": 45.0, "pressure": 1013.25}

    def __init__(self, opts=None):
        I2CModel.__init__(self, opts)
        self._regs = bytearray(256)
        self._regs[0x88:0xA0] = struct.pack("<Hhh" + "Hhhhhhhhh", *_TRIM_TP)
        self._regs[0xA1] = _H1
        self._regs[0xE1:0xE8] = struct.pack("<hBBBBb", _H2, _H3, _H4 >> 4,
                                            (_H5 & 0xF) << 4 | _H4 & 0xF, _H5 >> 4, _H6)
        self._regs[0xD0] = _CHIP_ID
        self._ptr = 0
        self._pending = None
        self._done = 0
        self._reset()

    def _reset(self):
        r = self._regs
        r[_CTRL_HUM] = r[_STATUS] = r[_CTRL_MEAS] = r[0xF5] = 0
        r[_DATA:0xFF] = _RESET_DATA
        self._pending = None

    def _measure(self):
        """Start a conversion: the result lands in the data registers when its time is up."""
        r = self._regs
        os_t, os_p, os_h = _OSRS[r[_CTRL_MEAS] >> 5], _OSRS[r[_CTRL_MEAS] >> 2 & 7], _OSRS[r[_CTRL_HUM] & 7]
        adc_t, adc_p, adc_h = 0x80000, 0x80000, 0x8000
        if os_t:
            adc_t = _solve(lambda a: _t_fine(a) / 5120.0, self.value("temperature"), 20, True)
            tf = _t_fine(adc_t)
            if os_p:
                adc_p = _solve(lambda a: _pressure(a, tf), self.value("pressure") * 100, 20, False)
            if os_h:
                adc_h = _solve(lambda a: _humidity(a, tf), self.value("humidity"), 16, True)
        self._pending = struct.pack(">IIH", adc_p << 12, adc_t << 12, adc_h)
        # datasheet 9.1: typical measurement time in ms
        ms = 1 + 2 * os_t + (2 * os_p + 1 if os_p else 0) + (2 * os_h + 1 if os_h else 0)
        self._done = time.ticks_add(time.ticks_ms(), ms)
        r[_STATUS] |= 0x08

    def _settle(self):
        if self._pending is not None and time.ticks_diff(time.ticks_ms(), self._done) >= 0:
            p = self._pending
            # big-endian words shifted into place: 3 bytes pressure, 3 temperature, 2 humidity
            self._regs[_DATA:0xFF] = p[0:3] + p[4:7] + p[8:10]
            self._pending = None
            self._regs[_STATUS] &= ~0x08
            if self._regs[_CTRL_MEAS] & 3 == 3:
                self._measure()  # normal mode: measure again and again
            else:
                self._regs[_CTRL_MEAS] &= 0xFC  # forced mode ends in sleep mode

    def write(self, buf):
        self.nack()
        self._settle()
        self._ptr = buf[0]
        for i in range(0, len(buf) - 1, 2):
            reg, val = buf[i], buf[i + 1]
            if reg == _RESET:
                if val == 0xB6:
                    self._reset()
            elif reg in (_CTRL_HUM, 0xF5):
                self._regs[reg] = val
            elif reg == _CTRL_MEAS:
                self._regs[reg] = val
                if val & 3:
                    self._measure()

    def read(self, n):
        self.nack()
        self._settle()
        p = self._ptr
        out = bytearray(self._regs[p:p + n])
        if self.failing("crc"):
            for j in range(n):
                if _DATA <= p + j < 0xFF:
                    out[j] = _RESET_DATA[p + j - _DATA]
        self._ptr = (p + n) & 0xFF
        return bytes(out)


Model = BME280
