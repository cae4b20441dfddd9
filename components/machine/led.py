"""An indicator LED with blink patterns.

Wiring: LED and a series resistor (220-1k Ohm) from the pin to GND; `active_low: true` when the LED
goes from 3.3 V to the pin (as the on-board LED of many ESP8266 boards, GPIO 2).

Example (hjson):
    status_led: {
        package: .machine.led
        component: LED
        constructor_args: {
            pin: 2               # output pin
            # active_low: false  # true: lit at level 0
        }
    }

State: `ON` (lit or blinking) / `OFF`, QoS 1, retained. Commands on `/set`: `ON`, `OFF`, `TOGGLE`, or a
pattern: `blink` (500 ms on/off), `fast` (100 ms), `heartbeat`, `flash` (one 100 ms flash, then back).
Other components call `await led.on()`, `off()`, `pattern("blink")`, `flash()`.
"""

import asyncio

from pysmartnode import hw
from pysmartnode.component import Component

__version__ = "1.0.0"

# on/off times in ms, repeated; a pattern ends with the LED in its previous steady state
PATTERNS = {"blink": (500, 500), "fast": (100, 100), "heartbeat": (100, 150, 100, 650)}
_NAMES = tuple(k.encode() for k in PATTERNS)


class LED(Component):
    __version__ = __version__  # what the loader reports in info
    platform = "switch"
    qos = 1

    def __init__(self, name, pin, active_low=False, **kwargs):
        self._low = bool(active_low)
        self._pin = hw.pin(pin, hw.OUT, value=1 if self._low else 0)
        Component.__init__(self, name, **kwargs)
        self.state = False
        self.effect = None
        self._task = None
        self.start(self.publish, False)

    def _lit(self, on):
        self._pin.value(0 if on == self._low else 1)

    def _stop(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.effect = None

    async def set(self, on):
        self._stop()
        self.state = bool(on)
        self._lit(self.state)
        await self.publish(self.state)

    async def on(self):
        await self.set(True)

    async def off(self):
        await self.set(False)

    async def pattern(self, name):
        if name not in PATTERNS:
            raise ValueError("unknown pattern %r (%s)" % (name, ", ".join(sorted(PATTERNS))))
        self._stop()
        self.effect = name
        self.state = True
        self._task = asyncio.create_task(self._run(PATTERNS[name]))
        await self.publish(True)

    async def _run(self, times):
        while True:
            for i, ms in enumerate(times):
                self._lit(not i & 1)
                await asyncio.sleep_ms(ms)

    async def flash(self, ms=100):
        """One flash, then back to the steady state (a running pattern stops)."""
        self._stop()
        self._lit(not self.state)
        await asyncio.sleep_ms(ms)
        self._lit(self.state)

    async def on_set(self, msg):
        cmd = bytes(msg).strip().lower()
        if cmd in (b"on", b"off"):
            await self.set(cmd == b"on")
        elif cmd == b"toggle":
            await self.set(not self.state)
        elif cmd == b"flash":
            await self.flash()
        elif cmd in _NAMES:
            await self.pattern(cmd.decode())
        else:  # raising: the node logs it with the topic and drops it
            raise ValueError("unknown command (ON, OFF, TOGGLE, flash, %s)" % ", ".join(sorted(PATTERNS)))
