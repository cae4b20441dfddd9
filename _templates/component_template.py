"""A template for a new component: copy it to components/<kind>/<name>.py and change what it does.

This example counts pulses on an input pin (a water meter's reed contact, an S0 energy meter output)
and publishes the count; `/set` `reset` sets it back to 0.

Wiring: the contact between the pin and GND, with the internal pull-up.

Example (hjson):
    water_meter: {
        package: ".machine.pulse_counter"   # where you put the copy; here: _templates.component_template
        component: PulseCounter
        constructor_args: {
            pin: 5             # input pin
            # interval: 60     # seconds between publishes
            # per_pulse: 0.5   # units per pulse (litres, Wh …)
            # unit: "L"
        }
    }

State: the count times `per_pulse`, a number, QoS 0, retained. Commands on `/set`: `reset`.

How a component declares its arguments (the config server reads this file, it never runs it):
- The constructor's signature is the declaration. The first parameter after `self` is the component's
  name, given by the loader; the rest are what a config may set.
- A default gives the type (`interval=60` is an int, `per_pulse=1.0` a float, `"L"` a str, `True` a
  bool). Where the default says nothing (None, or no default) write the type in a comment at the end
  of the line where the argument starts, one argument per line: `# type: int`, `# type: str|None`,
  `# type: I2C` (a capitalised class name: a reference to another component), `# type: component`
  (any component), `# type: pin`.
- Arguments named `pin`, `pin_<x>` or `pin<N>` are pins: the config server checks that no pin is
  used twice.
- `**kwargs` passes everything else to the base class: it means "and the arguments the base class
  declares" (`friendly_name`, `discover` of Component; `interval`, `publish_interval`, `precision`,
  `offset`, `window`, `delta`, `throttle` of the sensors' FilteredSensor).
- Validate arguments before calling the base class's `__init__` (raise ValueError/TypeError naming
  the argument): the loader logs the error with the component's name and the node runs on without it.

MicroPython first: no typing module, const() for constants, buffers allocated once in __init__,
hardware only through `pysmartnode.hw`.
"""

from micropython import const

from pysmartnode import hw
from pysmartnode.component import Component

__version__ = "1.0.0"

_DEBOUNCE_MS = const(5)


class PulseCounter(Component):
    __version__ = __version__  # what the loader reports in info
    platform = "sensor"  # Home Assistant platform; None: not announced
    qos = 0  # readings are QoS 0, switch-like states QoS 1

    def __init__(self, name, pin, interval=60, per_pulse=1.0,
                 unit=None,  # type: str|None
                 **kwargs):
        if not isinstance(interval, (int, float)) or interval <= 0:
            raise ValueError("interval: must be a number of seconds > 0, not %r" % (interval,))
        self._pin = hw.pin(pin, hw.IN, hw.PULL_UP)
        self._per = per_pulse
        self._unit = unit
        self.count = 0
        Component.__init__(self, name, **kwargs)  # topics, logger, registration with the node
        self._pin.irq(self._pulse, hw.IRQ_FALLING)
        self.start(self.update, every=interval)  # a task in this component's error boundary

    def _pulse(self, pin):
        self.count += 1  # an interrupt handler: no allocation, no await

    async def update(self):
        await self.publish(self.count * self._per)

    async def on_set(self, msg):  # a command on <home>/<id>/<name>/set; raising = malformed, logged, dropped
        if bytes(msg).strip().lower() != b"reset":
            raise ValueError("expected reset")
        self.count = 0
        await self.update()

    def discovery(self):  # (platform, object id, keys beyond those the node adds)
        d = {"command_topic": self.command_topic, "state_class": "total_increasing"}
        if self._unit:
            d["unit_of_measurement"] = self._unit
        return ((self.platform, self.name, d),)
