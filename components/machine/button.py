"""A push button or any binary input (door contact, PIR output): Home Assistant binary_sensor.

Wiring: button between the pin and GND, with the internal pull-up (`pull_up: true`, `active_low: true`,
the defaults); for a sensor that drives the line high when active, `active_low: false, pull_up: false`.

Example (hjson):
    door_bell: {
        package: .machine.button
        component: Button
        constructor_args: {
            pin: 0               # input pin
            # active_low: true   # pressed = level 0
            # pull_up: true      # enable the internal pull-up
            # debounce: 30       # ms a level must hold before it counts
            # long_press: 1000   # ms held for a long press
        }
    }

State: `ON` (pressed) / `OFF`, QoS 1, retained. Events on `<home>/<id>/<name>/event`, QoS 1, not
retained: `press` on release after a short press, `long` once a press has lasted `long_press` ms.
Other components read `button.state` and `button.presses` (count of short presses).
"""

import asyncio
import time

from pysmartnode import hw
from pysmartnode.component import Component

__version__ = "1.0.0"


class Button(Component):
    __version__ = __version__  # what the loader reports in info
    platform = "binary_sensor"
    qos = 1

    def __init__(self, name, pin, active_low=True, pull_up=True, debounce=30, long_press=1000, **kwargs):
        if not isinstance(debounce, int) or not 1 <= debounce <= 1000:
            raise ValueError("debounce: must be 1-1000 ms, not %r" % (debounce,))
        if not isinstance(long_press, int) or long_press <= debounce:
            raise ValueError("long_press: must be whole ms longer than debounce, not %r" % (long_press,))
        self._pin = hw.pin(pin, hw.IN, hw.PULL_UP if pull_up else None)
        self._low = bool(active_low)
        self._debounce = debounce
        self._long = long_press
        Component.__init__(self, name, **kwargs)
        self.state = self._pressed()
        self.presses = 0
        self.start(self._watch)

    def _pressed(self):
        return self._pin.value() != self._low

    async def _event(self, what):
        self.log.debug(what)
        await self.publish(what, retain=False, qos=1, subtopic="event")

    async def _watch(self):
        # Sampling every `debounce` ms: a level counts when two samples in a row agree.
        await self.publish(self.state)
        last = self.state
        since = time.ticks_ms()
        long_sent = False
        while True:
            await asyncio.sleep_ms(self._debounce)
            now = self._pressed()
            if now == last and now != self.state:
                self.state = now
                await self.publish(now)
                if now:
                    since, long_sent = time.ticks_ms(), False
                elif not long_sent:
                    self.presses += 1
                    await self._event("press")
            elif now and self.state and not long_sent and time.ticks_diff(time.ticks_ms(), since) >= self._long:
                long_sent = True
                await self._event("long")
            last = now
