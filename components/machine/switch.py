"""A GPIO output switched over MQTT: Home Assistant switch, state restored on boot.

Wiring: the pin drives a transistor, an SSR or a relay module input (never a relay coil directly).
`active_low: true` for inputs that switch on at 0 V. Use `.machine.relay` for relay modules.

Example (hjson):
    lamp: {
        package: .machine.switch
        component: Switch
        constructor_args: {
            pin: 12              # output pin
            # active_low: false  # true: the output is on at level 0
            # restore: true      # take the last state from the retained state topic on boot
            # initial: false     # state until then (and without restore)
        }
    }

State: `ON` / `OFF`, QoS 1, retained. Commands on `/set`: `ON`, `OFF`, `TOGGLE`.
Other components switch it with `await lamp.on()`, `off()`, `toggle()`, `set(True)`; `lamp.state`.
"""

from pysmartnode import hw
from pysmartnode.component import Component

__version__ = "1.0.0"


class Switch(Component):
    __version__ = __version__  # what the loader reports in info
    platform = "switch"
    qos = 1

    def __init__(self, name, pin, active_low=False, restore=True, initial=False, **kwargs):
        self._low = bool(active_low)
        self.state = bool(initial)
        self._pin = hw.pin(pin, hw.OUT, value=self._level(self.state))
        Component.__init__(self, name, **kwargs)
        self._restore = restore
        self.start(self._boot)

    def _level(self, on):
        return 0 if on == self._low else 1

    async def _boot(self):
        if self._restore:
            old = await self.restore_state()
            if not self._restore:
                pass  # a command came while waiting: it is newer than the retained state
            elif old in (b"ON", b"OFF"):
                self._apply(old == b"ON")
            elif old is not None:
                self.log.warning("retained state %r is not ON/OFF: kept %s" % (old, "ON" if self.state else "OFF"))
        await self.publish(self.state)

    def _apply(self, on):
        self.state = bool(on)
        self._pin.value(self._level(self.state))

    async def set(self, on):
        """Switch to `on` and publish the state (also when unchanged, so a command always gets an answer)."""
        self._restore = False
        self._apply(on)
        await self.publish(self.state)

    async def on(self):
        await self.set(True)

    async def off(self):
        await self.set(False)

    async def toggle(self):
        await self.set(not self.state)

    async def on_set(self, msg):
        cmd = bytes(msg).strip().upper()
        if cmd == b"ON" or cmd == b"OFF":
            await self.set(cmd == b"ON")
        elif cmd == b"TOGGLE":
            await self.toggle()
        else:  # raising: the node logs it with the topic and drops it
            raise ValueError("unknown command (ON, OFF, TOGGLE)")
