"""Free heap of the node, as a sensor.

Wiring: none.

Example (hjson):
    ram: {
        package: .machine.ram
        component: RAM
        constructor_args: {
            interval: 60   # seconds between readings
        }
    }

State: free heap in bytes after a garbage collection, a number.
"""

import gc

from components.sensors.filters import FilteredSensor

__version__ = "1.0.0"


class RAM(FilteredSensor):
    __version__ = __version__  # what the loader reports in info
    VALUES = (("free", "B", "data_size"),)

    def __init__(self, name, precision=0, **kwargs):
        FilteredSensor.__init__(self, name, precision=precision, **kwargs)

    async def _read(self):
        gc.collect()
        return gc.mem_free()
