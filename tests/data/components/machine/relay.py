"""A relay on one GPIO."""
from pysmartnode.component import Component

__version__ = "1.0.0"


class Relay(Component):
    def __init__(self, name, pin, active_low=False, restore=True, **kwargs):
        Component.__init__(self, name, **kwargs)

    def toggle(self):
        pass
