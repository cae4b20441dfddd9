"""An I2C bus that sensors reference by name.

Wiring: SDA and SCL to the board pins given (pull-ups of 4.7 kOhm to 3.3 V if the module has none);
without pins the port's hardware bus `bus` is used. On the unix port the bus is virtual and holds the
chip models of the board description.

Example (hjson):
    i2c: {
        package: .machine.i2c
        component: I2C
        constructor_args: {
            pin_scl: 5      # SCL pin
            pin_sda: 4      # SDA pin
            # freq: 400000  # bus clock in Hz
        }
    }
    # then in a sensor: constructor_args: { i2c: i2c }

State: the addresses that answered a scan at start, as a JSON list (`["0x40", "0x76"]`), retained.
"""

from pysmartnode import hw
from pysmartnode.component import Component

__version__ = "1.0.0"


def bus(ref, arg="i2c"):
    """The machine.I2C behind an I2C component (or a bus given directly); TypeError naming the argument
    when the reference is missing, e.g. a bus component that did not load leaves its name as a string."""
    b = getattr(ref, "bus", ref)
    if not hasattr(b, "readfrom_into"):
        raise TypeError("%s: no I2C bus %r (is the bus component loaded before this one?)" % (arg, ref))
    return b


class I2C(Component):
    __version__ = __version__  # what the loader reports in info
    def __init__(self, name, pin_scl=None, pin_sda=None, bus=0, freq=400000, **kwargs):
        if (pin_scl is None) != (pin_sda is None):
            raise ValueError("pin_scl and pin_sda: give both pins, or neither for hardware bus %r" % bus)
        self.bus = hw.i2c(bus, pin_scl, pin_sda, freq)
        Component.__init__(self, name, **kwargs)
        self.start(self._announce)

    def scan(self):
        return self.bus.scan()

    async def _announce(self):
        found = self.bus.scan()
        self.log.info("devices at %s" % (", ".join("0x%02x" % a for a in found) or "no address"))
        await self.publish(["0x%02x" % a for a in found])
