"""A relay on one GPIO."""
from pysmartnode.component import ComponentBase

__version__ = "1.0.0"


class Relay(ComponentBase):
    def __init__(self, pin, active_low=False, restore=True, **kwargs):
        super().__init__(**kwargs)

    def toggle(self):
        pass
