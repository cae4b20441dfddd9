"""A dimmable output (LED strip through a MOSFET, a fan): Home Assistant light with brightness.

Wiring: the pin drives the gate of a logic-level N-MOSFET (or a driver module) that switches the load's
ground; never a load straight from the pin.

Example (hjson):
    strip: {
        package: .machine.pwm
        component: PWM
        constructor_args: {
            pin: 15              # PWM-capable pin
            # freq: 1000         # Hz
            # gamma: 2.2         # brightness curve: 1 linear, 2.2 looks even to the eye
            # restore: true      # take the last state from the retained state topic on boot
        }
    }

State: `{"state": "ON", "brightness": 128}` (brightness 0-255), QoS 1, retained: Home Assistant's
JSON light schema. Commands on `/set`: that JSON (either key), `ON`, `OFF`, `TOGGLE`, or a bare
brightness `0`-`255`. Switching on restores the last brightness. Other components call
`await strip.set(on=True, brightness=64)`.
"""

import json

from pysmartnode import hw
from pysmartnode.component import Component

__version__ = "1.0.0"


class PWM(Component):
    __version__ = __version__  # what the loader reports in info
    platform = "light"
    qos = 1

    def __init__(self, name, pin, freq=1000, gamma=2.2, restore=True, **kwargs):
        if not isinstance(freq, int) or not 1 <= freq <= 40000000:
            raise ValueError("freq: must be a whole number of Hz, not %r" % (freq,))
        if not isinstance(gamma, (int, float)) or not 0.5 <= gamma <= 4:
            raise ValueError("gamma: must be 0.5-4, not %r" % (gamma,))
        self._pwm = hw.pwm(pin, freq, 0)
        self._gamma = gamma
        Component.__init__(self, name, **kwargs)
        self.state = False
        self.brightness = 255
        self._restore = restore
        self.start(self._boot)

    def _state(self):
        return {"state": "ON" if self.state else "OFF", "brightness": self.brightness}

    async def _boot(self):
        if self._restore:
            old = await self.restore_state()
            if old is not None and self._restore:  # not when a command came while waiting
                try:
                    self._apply(json.loads(old), True)
                except (ValueError, TypeError) as e:
                    self.log.warning("retained state %r not taken: %s" % (old[:40], e))
        self._output()
        await self.publish(self._state())

    def _output(self):
        b = self.brightness if self.state else 0
        self._pwm.duty_u16(int(65535 * (b / 255) ** self._gamma + 0.5))

    def _apply(self, cmd, restoring=False):
        """Take a command (dict, or str ON/OFF/TOGGLE, or a brightness); ValueError when malformed."""
        if isinstance(cmd, dict):
            on, b = cmd.get("state", "ON" if "brightness" in cmd else None), cmd.get("brightness")
        elif isinstance(cmd, int) and not isinstance(cmd, bool):
            on, b = None, cmd
        else:
            on, b = cmd, None
        if on not in (None, "ON", "OFF", "TOGGLE"):
            raise ValueError("state must be ON, OFF or TOGGLE, not %r" % (on,))
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or not 0 <= b <= 255):
            raise ValueError("brightness must be 0-255, not %r" % (b,))
        if b is not None:
            self.brightness = b
            on = on or ("ON" if b else "OFF")
        if b == 0:
            on, self.brightness = "OFF", 255  # off, and the next ON comes back at full brightness
        if on is not None:
            self.state = not self.state if on == "TOGGLE" else on == "ON"
        self._restore = self._restore and restoring  # a command is newer than any retained state

    async def set(self, on=None, brightness=None):
        d = {}
        if on is not None:
            d["state"] = "ON" if on else "OFF"
        if brightness is not None:
            d["brightness"] = brightness
        self._apply(d)
        self._output()
        await self.publish(self._state())

    async def on_set(self, msg):
        text = bytes(msg).strip()
        if text[:1] == b"{":
            cmd = json.loads(text)
        elif text.isdigit():
            cmd = int(text)
        else:
            cmd = text.upper().decode()
        self._apply(cmd)
        self._output()
        await self.publish(self._state())

    def discovery(self):
        return ((self.platform, self.name, {"command_topic": self.command_topic, "schema": "json",
                                             "brightness": True, "brightness_scale": 255,
                                             "supported_color_modes": ["brightness"]}),)
