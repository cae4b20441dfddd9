from pysmartnode.component import Component

__version__ = "1.0.0"


class I2C(Component):
    def __init__(self, name, pin_scl, pin_sda, freq=100000,  # type: int
                 **kwargs):
        Component.__init__(self, name, **kwargs)
