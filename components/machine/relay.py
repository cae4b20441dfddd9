"""A relay module on a GPIO pin: a switch that is active low by default, as most relay boards are.

Wiring: module IN to the pin, VCC and GND to the module's supply (5 V boards take a 3.3 V input on
most modules with optocouplers); the load on COM and NO. Set `active_low: false` for modules that
switch on at a high input.

Example (hjson):
    heater: {
        package: .machine.relay
        component: Relay
        constructor_args: {
            pin: 14              # the module's IN pin
            # active_low: true   # most relay modules switch on at 0 V
            # restore: true      # take the last state from the retained state topic on boot
        }
    }

State: `ON` / `OFF`, QoS 1, retained. Commands on `/set`: `ON`, `OFF`, `TOGGLE`.
"""

from components.machine.switch import Switch

__version__ = "1.0.0"


class Relay(Switch):
    __version__ = __version__  # what the loader reports in info
    def __init__(self, name, pin, active_low=True, **kwargs):
        Switch.__init__(self, name, pin, active_low=active_low, **kwargs)
