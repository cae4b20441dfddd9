"""HTU21D on I2C."""
from pysmartnode import sensor

__version__ = "1.2.0"


class HTU21D(sensor.SensorBase):
    def __init__(self, i2c,  # type: I2C
                 precision_temp=2, precision_humid=1,
                 offset_temp: float = 0.0,
                 address=0x40,
                 **kwargs):
        super().__init__(**kwargs)
