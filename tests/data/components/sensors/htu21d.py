"""HTU21D on I2C."""
from pysmartnode import component

__version__ = "1.2.0"


class HTU21D(component.Sensor):
    def __init__(self, name, i2c,  # type: I2C
                 precision_temp=2, precision_humid=1,
                 offset_temp: float = 0.0,
                 address=0x40,  # type: int
                 **kwargs):
        component.Sensor.__init__(self, name, **kwargs)
