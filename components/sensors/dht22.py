"""Aosong DHT22 / AM2302 temperature and humidity sensor on one data pin.

Wiring: data to the pin with a 10 kOhm pull-up to 3.3 V (modules have one), VCC 3.3 V, GND. The part
measures at most every 2 s: `interval` below 2 is raised to 2.

Example (hjson):
    porch: {
        package: .sensors.dht22
        component: DHT22
        constructor_args: {
            pin: 17                   # data pin
            # interval: 60            # seconds between readings (>= 2)
            # precision: 1  offset: 0  window: 1  delta: null  throttle: null
        }
    }

State: `{"temperature": 21.4, "humidity": 48.2}`, QoS 0, retained. A frame with a wrong checksum or a
part that does not answer gives None: logged at error, nothing published.
"""

from pysmartnode import hw
from components.sensors.filters import FilteredSensor

__version__ = "1.0.0"


class DHT22(FilteredSensor):
    __version__ = __version__  # what the loader reports in info
    VALUES = (("temperature", "°C", "temperature"), ("humidity", "%", "humidity"))

    def __init__(self, name, pin, **kwargs):
        self._dht = hw.dht(pin, "dht22")
        if kwargs.get("interval") is not None and kwargs["interval"] < 2:
            kwargs["interval"] = 2
        FilteredSensor.__init__(self, name, **kwargs)

    async def _read(self):
        d = self._dht
        d.measure()  # the transfer takes 5 ms: short enough to run in the loop
        return d.temperature(), d.humidity()
