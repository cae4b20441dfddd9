"""A one-wire bus that DS18B20 sensors reference by name.

Wiring: the data line of every device to one pin, with a 4.7 kOhm pull-up to 3.3 V; devices powered
from 3.3 V (parasite power is not supported). On the unix port the bus is virtual and holds the
DS18B20 models of the board description.

Example (hjson):
    ow: {
        package: .machine.onewire
        component: OneWire
        constructor_args: {
            pin: 13   # data pin
        }
    }
    # then: temp: { package: .sensors.ds18b20, component: DS18B20, constructor_args: { onewire: ow } }

State: the ROM codes found by a search at start, as a JSON list of hex strings, retained.
"""

from pysmartnode import hw
from pysmartnode.component import Component

__version__ = "1.0.0"


def bus(ref, arg="onewire"):
    """The onewire.OneWire behind a OneWire component (or a bus given directly); TypeError otherwise."""
    b = getattr(ref, "bus", ref)
    if not hasattr(b, "select_rom"):
        raise TypeError("%s: no one-wire bus %r (is the bus component loaded before this one?)" % (arg, ref))
    return b


def hexrom(rom):
    return "".join("%02x" % b for b in rom)


class OneWire(Component):
    __version__ = __version__  # what the loader reports in info
    def __init__(self, name, pin, **kwargs):
        self.bus = hw.onewire(pin)
        Component.__init__(self, name, **kwargs)
        self.start(self._announce)

    def scan(self):
        return self.bus.scan()

    async def _announce(self):
        roms = [hexrom(r) for r in self.bus.scan()]
        self.log.info("devices %s" % (", ".join(roms) or "none"))
        await self.publish(roms)
