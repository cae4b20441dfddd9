"""A thermostat: any temperature sensor and any switch, by reference. Home Assistant climate entity.

Wiring: none of its own; it uses a sensor component (anything with `async temperature(publish)`,
e.g. `.sensors.bme280`) and a switch component (anything with `async on()`, `async off()` and
`state`, e.g. `.machine.relay`), both loaded before it.

Example (hjson):
    heating: {
        package: .devices.thermostat
        component: Thermostat
        constructor_args: {
            sensor: "outside"         # a temperature sensor component
            switch: "heater"          # the relay that drives the heater (or the cooler)
            # target: 21.0          # °C
            # hysteresis: 0.5       # on below target - hysteresis, off above target + hysteresis
            # mode: "heat"          # heat, cool or off
            # interval: 30          # seconds between control steps
        }
    }

State: `{"mode": "heat", "target": 21.0, "current": 20.3, "action": "heating"}` (action `heating`,
`cooling`, `idle` or `off`), QoS 1, retained; mode and target are restored on boot. Commands on
`/set`: a number (the target, 5-35 °C), `heat`, `cool`, `off`, or JSON `{"mode": …, "target": …}`.
A sensor reading that fails switches the output off (fail safe) and logs an error.
"""

import asyncio
import json

from micropython import const

from pysmartnode.component import Component

__version__ = "1.0.0"

MODES = ("heat", "cool", "off")
_MIN, _MAX = 5.0, 35.0
_RESTORE_S = const(10)


class Thermostat(Component):
    __version__ = __version__  # what the loader reports in info
    platform = "climate"
    qos = 1

    def __init__(self, name,
                 sensor,  # type: component
                 switch,  # type: component
                 target=21.0, hysteresis=0.5, mode="heat", interval=30, **kwargs):
        if not hasattr(sensor, "temperature"):
            raise TypeError("sensor: %r has no temperature() (is the sensor loaded before this one?)" % (sensor,))
        for m in ("on", "off"):
            if not hasattr(switch, m):
                raise TypeError("switch: %r has no %s() (is the switch loaded before this one?)" % (switch, m))
        if mode not in MODES:
            raise ValueError("mode: must be heat, cool or off, not %r" % (mode,))
        if not isinstance(hysteresis, (int, float)) or hysteresis < 0:
            raise ValueError("hysteresis: must be a number >= 0, not %r" % (hysteresis,))
        if not isinstance(interval, (int, float)) or interval <= 0:
            raise ValueError("interval: must be a number of seconds > 0, not %r" % (interval,))
        self.sensor = sensor
        self.switch = switch
        self.target = self._target(target)
        self.hysteresis = hysteresis
        self.mode = mode
        self.current = None
        self.action = "off" if mode == "off" else "idle"
        self._commanded = False
        self._interval = interval
        Component.__init__(self, name, **kwargs)
        self.start(self._boot)

    @staticmethod
    def _target(t):
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not _MIN <= t <= _MAX:
            raise ValueError("target: must be %d-%d °C, not %r" % (_MIN, _MAX, t))
        return float(t)

    async def _boot(self):
        try:  # a thermostat must work without the broker too: wait for the retained state only so long
            old = await asyncio.wait_for(self.restore_state(), _RESTORE_S)
        except asyncio.TimeoutError:
            old = None
            self.log.warning("no broker within %d s: running with the configured mode and target" % _RESTORE_S)
        if old is not None and not self._commanded:  # a command while waiting is newer
            try:
                self._apply(json.loads(old), True)
            except (ValueError, TypeError, AttributeError) as e:
                self.log.warning("retained state %r not taken: %s" % (old[:60], e))
        # control only from here on: a step before the restore would overwrite the retained state
        self.start(self.step, every=self._interval)

    def _apply(self, cmd, restoring=False):
        if isinstance(cmd, dict):
            mode, target = cmd.get("mode"), cmd.get("target")
        elif isinstance(cmd, str):
            mode, target = cmd, None
        else:
            mode, target = None, cmd
        if mode is not None and mode not in MODES:
            raise ValueError("mode must be heat, cool or off, not %r" % (mode,))
        if target is not None:
            self.target = self._target(target)
        if mode is not None:
            self.mode = mode
        self._commanded = self._commanded or not restoring

    async def step(self):
        """One control step: read the sensor, switch, publish."""
        t = await self.sensor.temperature(publish=False)
        self.current = t
        sw = self.switch
        if self.mode == "off" or t is None:
            if t is None and self.mode != "off":
                self.log.error("no temperature from %s: output off" % getattr(self.sensor, "name", "sensor"))
            want = False
        else:
            heat = self.mode == "heat"
            low, high = self.target - self.hysteresis, self.target + self.hysteresis
            if t < low:
                want = heat
            elif t > high:
                want = not heat
            else:
                want = bool(sw.state)  # inside the band: leave it as it is
        if bool(sw.state) != want:
            self.log.info("%s %s at %s °C (target %s)" % (getattr(sw, "name", "switch"), "on" if want else "off",
                                                          t, self.target))
            await (sw.on() if want else sw.off())
        self.action = "off" if self.mode == "off" else ("heating" if self.mode == "heat" else "cooling") \
            if want else "idle"
        await self.publish({"mode": self.mode, "target": self.target, "current": t, "action": self.action})

    async def on_set(self, msg):
        text = bytes(msg).strip()
        if text[:1] == b"{":
            cmd = json.loads(text)
        else:
            try:
                cmd = float(text)
            except ValueError:
                cmd = text.lower().decode()
        self._apply(cmd)
        await self.step()

    def discovery(self):
        t = self.topic
        return ((self.platform, self.name, {
            "modes": list(MODES), "mode_command_topic": self.command_topic, "mode_state_topic": t,
            "mode_state_template": "{{ value_json.mode }}", "temperature_command_topic": self.command_topic,
            "temperature_state_topic": t, "temperature_state_template": "{{ value_json.target }}",
            "current_temperature_topic": t, "current_temperature_template": "{{ value_json.current }}",
            "action_topic": t, "action_template": "{{ value_json.action }}", "min_temp": _MIN,
            "max_temp": _MAX, "temp_step": 0.5, "temperature_unit": "C"}),)
