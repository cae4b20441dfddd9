# Aosong DHT22 / AM2302 temperature and humidity sensor on one data pin.
# A transfer is 40 bits: humidity x10 (16 bits), temperature x10 (15 bits, bit 15 the sign: not two's
# complement), then the low byte of the sum of those four bytes. The model builds that frame and
# `measure()` decodes it as MicroPython's `dht` module does on a board (checksum error, or OSError
# ETIMEDOUT when the part does not answer). The part measures at most every 2 s; a transfer sooner
# repeats the last measurement, as the real one does.
import time

from pysmartnode.virtual.models import SensorModel


class DHT22(SensorModel):
    defaults = {"temperature": 21.0, "humidity": 45.0}

    def __init__(self, opts=None):
        SensorModel.__init__(self, opts)
        self._frame = bytearray(5)
        self._when = None

    def frame(self, buf):
        """One transfer into `buf` (5 bytes)."""
        self.nack_timeout()
        now = time.ticks_ms()
        if self._when is None or time.ticks_diff(now, self._when) >= 2000:
            self._when = now
            h = min(max(int(round(self.value("humidity") * 10)), 0), 1000)
            t = min(max(int(round(self.value("temperature") * 10)), -400), 800)
            t = -t | 0x8000 if t < 0 else t
            f = self._frame
            f[0], f[1], f[2], f[3] = h >> 8, h & 0xFF, t >> 8, t & 0xFF
            f[4] = (f[0] + f[1] + f[2] + f[3]) & 0xFF
        buf[0:5] = self._frame
        if self.failing("crc"):
            buf[4] ^= 0xFF

    def nack_timeout(self):
        if self.failing("nack"):
            raise OSError(110)  # ETIMEDOUT, as dht_readinto raises when no start pulse comes back

    def measure(self):
        buf = bytearray(5)
        self.frame(buf)
        if buf[4] != (buf[0] + buf[1] + buf[2] + buf[3]) & 0xFF:
            raise Exception("checksum error")
        t = ((buf[2] & 0x7F) << 8 | buf[3]) / 10
        return (-t if buf[2] & 0x80 else t), (buf[0] << 8 | buf[1]) / 10


Model = DHT22
