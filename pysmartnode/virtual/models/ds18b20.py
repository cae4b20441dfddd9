# Maxim DS18B20 one-wire thermometer, externally powered (datasheet 19-7487).
# The virtual one-wire bus does the ROM layer (skip, match, scan); this model gets what
# follows: function commands 0x44 convert, 0xBE read scratchpad (9 bytes, CRC-8 Maxim last), 0x4E write
# scratchpad (TH, TL, config), 0x48 copy, 0xB8 recall, 0xB4 read power supply. The scratchpad holds
# 85.0 °C until the first conversion ends, as the chip's power-on value does; a conversion takes 94,
# 188, 375 or 750 ms by resolution, and reading the scratchpad sooner gives the previous temperature.
import time

from micropython import const

from pysmartnode.virtual.models import SensorModel
from pysmartnode.virtual.parts import crc8

_CONVERT = const(0x44)
_READ = const(0xBE)
_WRITE = const(0x4E)
_POWER = const(0xB4)


class DS18B20(SensorModel):
    defaults = {"temperature": 21.0}

    def __init__(self, opts=None):
        SensorModel.__init__(self, opts)
        # temperature LSB, MSB (85.0), TH, TL, config (12 bits), reserved 0xFF, 0x0C, 0x10
        self._scratch = bytearray(b"\x50\x05\x4b\x46\x7f\xff\x0c\x10")
        self._pending = None
        self._done = 0
        self._out = b""

    def reset(self):
        self._settle()
        self._out = b""

    def _settle(self):
        if self._pending is not None and time.ticks_diff(time.ticks_ms(), self._done) >= 0:
            self._scratch[0], self._scratch[1] = self._pending & 0xFF, self._pending >> 8
            self._pending = None

    def write(self, buf):
        self._settle()
        cmd = buf[0]
        if cmd == _CONVERT:
            bits = 9 + (self._scratch[4] >> 5 & 3)
            raw = int(round(self.value("temperature") * 16))
            self._pending = max(-880, min(2000, raw)) & (0xFFFF << (12 - bits)) & 0xFFFF  # -55 .. 125 °C
            self._done = time.ticks_add(time.ticks_ms(), 750 >> (12 - bits))
        elif cmd == _READ:
            crc = crc8(self._scratch) ^ (0xFF if self.failing("crc") else 0)
            self._out = bytes(self._scratch) + bytes((crc,))
        elif cmd == _WRITE and len(buf) >= 4:
            self._scratch[2], self._scratch[3] = buf[1], buf[2]
            self._scratch[4] = buf[3] & 0x60 | 0x1F
        elif cmd == _POWER:
            self._out = b"\xff"  # externally powered

    def read(self, n):
        out, self._out = self._out[:n], self._out[n:]
        return out + b"\xff" * (n - len(out))


Model = DS18B20
