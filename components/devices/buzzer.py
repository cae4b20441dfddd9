"""A passive piezo buzzer playing tones over PWM.

Wiring: buzzer between the pin and GND (a passive one: an active buzzer only beeps at its own pitch);
for loud ones a transistor with the buzzer on 5 V.

Example (hjson):
    buzzer: {
        package: .devices.buzzer
        component: Buzzer
        constructor_args: {
            pin: 25            # PWM-capable pin
            # volume: 50       # duty cycle in percent of 50 % (the loudest for a piezo)
        }
    }

State: `ON` while playing, `OFF` when silent, QoS 1, retained. Commands on `/set`: `beep`, `alarm`,
`ok`, or a melody: JSON `[[frequency Hz, ms], …]` (frequency 0 is a rest), at most 64 notes.
Home Assistant shows a button that beeps. Other components call `await buzzer.play([[880, 100]])`.
"""

import asyncio
import json

from pysmartnode import hw
from pysmartnode.component import Component

__version__ = "1.0.0"

TUNES = {"beep": ((2000, 120),), "ok": ((1047, 80), (0, 40), (1568, 120)),
         "alarm": ((1760, 200), (0, 100)) * 5}
_MAX_NOTES = 64


class Buzzer(Component):
    __version__ = __version__  # what the loader reports in info
    platform = "button"
    qos = 1

    def __init__(self, name, pin, volume=50, **kwargs):
        if not isinstance(volume, int) or not 0 <= volume <= 100:
            raise ValueError("volume: must be 0-100, not %r" % (volume,))
        self._pwm = hw.pwm(pin, 1000, 0)
        self._duty = volume * 32767 // 100
        Component.__init__(self, name, **kwargs)
        self._task = None
        self.start(self.publish, False)

    async def play(self, notes):
        """Play `notes` ((Hz, ms), …) now, cutting off what was playing."""
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._run(notes))
        await self.publish(True)

    async def _run(self, notes):
        try:
            for f, ms in notes:
                if f:
                    self._pwm.freq(f)
                self._pwm.duty_u16(self._duty if f else 0)
                await asyncio.sleep_ms(ms)
        finally:
            self._pwm.duty_u16(0)
        self._task = None
        await self.publish(False)

    async def on_set(self, msg):
        text = bytes(msg).strip()
        name = text.lower().decode()
        if name in TUNES:
            return await self.play(TUNES[name])
        if text[:1] != b"[":
            raise ValueError("expected %s or a JSON list of [Hz, ms]" % ", ".join(TUNES))
        notes = json.loads(text)
        if not isinstance(notes, list) or not 0 < len(notes) <= _MAX_NOTES:
            raise ValueError("a melody is a list of 1-%d [Hz, ms] notes" % _MAX_NOTES)
        for n in notes:
            if not (isinstance(n, list) and len(n) == 2 and isinstance(n[0], int) and isinstance(n[1], int)
                    and (n[0] == 0 or 20 <= n[0] <= 20000) and 0 < n[1] <= 10000):
                raise ValueError("note %r: must be [0 or 20-20000 Hz, 1-10000 ms]" % (n,))
        await self.play(notes)

    def discovery(self):
        return ((self.platform, self.name, {"command_topic": self.command_topic, "payload_press": "beep"}),)
