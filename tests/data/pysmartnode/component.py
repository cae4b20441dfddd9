# A stand-in for the node's component base class, as the config server's declaration reader sees it:
# input data for tests/test_config_server_declarations.py, never imported or run.


class Component:
    __version__ = "0.0.0"

    def __init__(self, name, friendly_name=None,  # type: str | None
                 discover=True):
        self.name = name

    async def publish(self, value):
        pass


class Sensor(Component):
    def __init__(self, name, interval=None,  # type: float | None
                 publish_interval=None,  # type: float | None
                 precision=1,  # type: int | dict
                 offset=0, **kw):
        Component.__init__(self, name, **kw)

    async def temperature(self, publish=True):
        return None
