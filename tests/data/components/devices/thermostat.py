from pysmartnode.component import Component

__version__ = "0.3.0"


class Thermostat(Component):
    def __init__(self, name, sensor,  # type: component
                 switch,  # type: Relay
                 target: float = 21.0,
                 hysteresis=0.5,
                 mode="heat",  # type: str
                 **kwargs):
        Component.__init__(self, name, **kwargs)

    async def set_target(self, value):
        pass
