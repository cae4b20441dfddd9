# HTU21D / SHT21 humidity and temperature sensor, I2C address 0x40 (TE datasheet HPC199_6).
# Commands: 0xE3/0xE5 measure T/RH holding the clock, 0xF3/0xF5 without holding it (a read before the
# conversion ends is not acknowledged), 0xE6/0xE7 write/read the user register, 0xFE soft reset.
# A result is MSB, LSB (status bit 1: 0 temperature, 1 humidity), then a CRC-8 (x^8+x^5+x^4+1), which
# this model computes by the datasheet's long division, independently of the driver's shift register.
import time

from micropython import const

from pysmartnode.virtual.models import I2CModel

_T_HOLD = const(0xE3)
_RH_HOLD = const(0xE5)
_T = const(0xF3)
_RH = const(0xF5)
_W_USER = const(0xE6)
_R_USER = const(0xE7)
_RESET = const(0xFE)
_USER_DEFAULT = const(0x02)
# user register bits 7,0 -> (RH bits, T bits); typical conversion times in ms (datasheet table 5)
_RES = ((12, 14), (8, 12), (10, 13), (11, 11))
_MS = {14: 44, 13: 22, 12: 11, 11: 6, 10: 4, 8: 2}


def check_value(word):
    """The CRC of a 16-bit result: the remainder of word * 2**8 divided by 0x131."""
    v = word << 8
    for i in range(15, -1, -1):
        if v & (0x100 << i):
            v ^= 0x131 << i
    return v


class HTU21D(I2CModel):
    defaults = {"temperature": 21.0, "humidity": 45.0}

    def __init__(self, opts=None):
        I2CModel.__init__(self, opts)
        self._user = _USER_DEFAULT
        self._out = b""
        self._ready = time.ticks_ms()

    def _measure(self, humidity, hold):
        rh_bits, t_bits = _RES[(self._user >> 6) & 2 | self._user & 1]
        if humidity:
            bits, raw = rh_bits, (self.value("humidity") + 6) * 65536 / 125
        else:
            bits, raw = t_bits, (self.value("temperature") + 46.85) * 65536 / 175.72
        raw = min(max(int(raw + 0.5), 0), 0xFFFF) & (0xFFFF << (16 - bits)) & 0xFFFC
        raw |= 2 if humidity else 0
        crc = check_value(raw) ^ (0xFF if self.failing("crc") else 0)
        self._out = bytes((raw >> 8, raw & 0xFF, crc))
        # holding the clock the chip answers when done; otherwise a read before then is not acknowledged
        self._ready = time.ticks_add(time.ticks_ms(), 0 if hold else _MS[bits])

    def write(self, buf):
        self.nack()
        cmd = buf[0]
        if cmd in (_T, _T_HOLD, _RH, _RH_HOLD):
            self._measure(cmd in (_RH, _RH_HOLD), cmd in (_T_HOLD, _RH_HOLD))
        elif cmd == _R_USER:
            self._out = bytes((self._user,))
        elif cmd == _W_USER and len(buf) == 2:
            self._user = buf[1] & 0xC7 | self._user & 0x38  # bits 3-5 are reserved
        elif cmd == _RESET:
            self._user = _USER_DEFAULT
            self._out = b""
        else:
            raise OSError(5)  # EIO: the chip does not acknowledge an unknown command byte

    def read(self, n):
        self.nack()
        if time.ticks_diff(self._ready, time.ticks_ms()) > 0:
            raise OSError(19)  # ENODEV: still converting
        out = self._out[:n]
        return out + b"\xff" * (n - len(out))


Model = HTU21D
