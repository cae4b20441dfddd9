"""Maxim DS18B20 one-wire thermometer, scratchpad CRC-checked.

Wiring: data to the pin of an `.machine.onewire` component (4.7 kOhm pull-up to 3.3 V), VDD 3.3 V,
GND. Several sensors share one bus: give each its `rom` (the bus component publishes the ROMs it found).

Example (hjson):
    water: {
        package: .sensors.ds18b20
        component: DS18B20
        constructor_args: {
            onewire: "ow"               # the one-wire bus component, loaded before
            # rom: 28ff4a1c33160456   # 16 hex digits; default: the only (first) DS18B20 on the bus
            # resolution: 12          # bits, 9-12: conversion 94, 188, 375, 750 ms
            # interval: 30            # seconds between readings
            # offset: 0.3  precision: 1  window: 1  delta: null  throttle: null
        }
    }

State: the temperature in °C, a number, QoS 0, retained. A scratchpad whose CRC does not match, or a
bus without a presence pulse, gives None: logged at error, nothing published.
"""

import asyncio
import binascii

from micropython import const

from components.machine.onewire import bus, hexrom
from components.sensors.filters import FilteredSensor

__version__ = "1.0.0"

_FAMILY = const(0x28)
_CONVERT = const(0x44)
_READ = const(0xBE)
_WRITE = const(0x4E)


def decode(scratch):
    """°C from a scratchpad (two's complement, 1/16 °C)."""
    raw = scratch[1] << 8 | scratch[0]
    return (raw - 65536 if raw & 0x8000 else raw) / 16


class DS18B20(FilteredSensor):
    __version__ = __version__  # what the loader reports in info
    VALUES = (("temperature", "°C", "temperature"),)

    def __init__(self, name,
                 onewire,  # type: OneWire
                 rom=None,  # type: str|None
                 resolution=12, **kwargs):
        if resolution not in (9, 10, 11, 12):
            raise ValueError("resolution: must be 9, 10, 11 or 12 bits, not %r" % (resolution,))
        self._rom = None
        if rom is not None:
            try:
                self._rom = binascii.unhexlify(rom)
            except (TypeError, ValueError):
                pass
            if self._rom is None or len(self._rom) != 8 or self._rom[0] != _FAMILY:
                raise ValueError("rom: 16 hex digits starting 28 (a DS18B20), not %r" % (rom,))
        self._bus = bus(onewire)
        self._res = resolution
        self._cfg = None  # resolution written yet
        self._buf = bytearray(9)
        FilteredSensor.__init__(self, name, **kwargs)

    def _select(self):
        if not self._bus.reset():
            raise OSError("no presence pulse on the one-wire bus")
        self._bus.writebyte(0x55)
        self._bus.write(self._rom)

    async def _read(self):
        ow = self._bus
        if self._rom is None:
            roms = [r for r in ow.scan() if r[0] == _FAMILY]
            if not roms:
                raise OSError("no DS18B20 on the one-wire bus")
            self._rom = bytes(roms[0])
            self.log.info("using %s" % hexrom(self._rom))
        if self._cfg != self._res:
            self._select()
            ow.write(bytes((_WRITE, 0x4B, 0x46, (self._res - 9) << 5 | 0x1F)))
            self._cfg = self._res
        self._select()
        ow.writebyte(_CONVERT)
        await asyncio.sleep_ms(750 >> (12 - self._res))
        self._select()
        ow.writebyte(_READ)
        ow.readinto(self._buf)
        if ow.crc8(self._buf):
            self._cfg = None  # a reset sensor forgets its resolution: write it again
            raise ValueError("scratchpad CRC mismatch (%s)" % hexrom(self._buf))
        return decode(self._buf)
