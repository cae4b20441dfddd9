from pysmartnode.component import ComponentBase

__version__ = "0.3.0"


class Thermostat(ComponentBase):
    def __init__(self, sensor,  # type: component
                 switch,  # type: Relay
                 target: float = 21.0,
                 hysteresis=0.5,
                 mode="heat",  # type: str
                 **kwargs):
        super().__init__(**kwargs)
