"""An analog input with scaling (battery voltage through a divider, a soil moisture probe, an LDR).

Wiring: the signal to an ADC-capable pin (ESP32: GPIO 32-39 with Wi-Fi on; ESP8266: pin 0, A0,
0-1 V); never more than the ADC's range: use a divider.

Example (hjson):
    battery: {
        package: .machine.adc
        component: ADC
        constructor_args: {
            pin: 34                 # ADC pin (ESP8266: 0)
            scale: 6.6              # the value at a full-scale reading (3.3 V through a 1:2 divider)
            # unit: "V"
            # device_class: "voltage"   # Home Assistant device class, or null
            # precision: 2  offset: 0  interval: 30  window: 4  delta: null  throttle: null
        }
    }

State: `raw / 65535 * scale + offset`, a number, QoS 0, retained.
"""

from pysmartnode import hw
from components.sensors.filters import FilteredSensor

__version__ = "1.0.0"


class ADC(FilteredSensor):
    __version__ = __version__  # what the loader reports in info
    def __init__(self, name, pin, scale=1.0,
                 unit=None,  # type: str|None
                 device_class=None,  # type: str|None
                 **kwargs):
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise ValueError("scale: must be a number, not %r" % (scale,))
        self._adc = hw.adc(pin)
        self._scale = scale
        self.VALUES = (("value", unit, device_class),)
        FilteredSensor.__init__(self, name, **kwargs)

    async def _read(self):
        return self._adc.read_u16() * self._scale / 65535
