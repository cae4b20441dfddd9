from .component import ComponentBase


class SensorBase(ComponentBase):
    def __init__(self, interval_read=10,  # type: float
                 interval_publish=None,  # type: float
                 **kwargs):
        super().__init__(**kwargs)

    async def temperature(self, publish=True):
        return None
