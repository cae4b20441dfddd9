# A stand-in for the component base class, as the config server's declaration reader sees it.
# (Input data for tests/test_config_server_declarations.py; never imported.)
__version__ = "0.1.0"


class ComponentBase:
    def __init__(self, discover=True, friendly_name=None,  # type: str | None
                 ):
        self.discover = discover

    def on_message(self, topic, msg):
        pass
