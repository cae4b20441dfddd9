"""SmartFleet host package: what the CPython services share.

MQTT settings and connection helper (`fleet.mqtt`), topic helpers (`fleet.topics`), the broker
runner (`fleet.broker`), the position-keeping hjson loader (`fleet.hjsonpos`), errors
(`fleet.errors`) and the `fleet` command line (`fleet.cli`).
"""

__version__ = "0.1.0"
