"""Link and uptime statistics of the node, for Home Assistant's diagnostics.

Wiring: none.

Example (hjson):
    stats: {
        package: .machine.stats
        component: Stats
        constructor_args: {
            interval: 300   # seconds between publishes
        }
    }

State: `{"uptime": 1234, "reconnects": 2, "dropped": 0, "heap_min": 19800, "rssi": -61, "ip": "192.168.1.40"}`
QoS 0, retained; `rssi` and `ip` only where the port has them (not on the unix port).
"""

from pysmartnode.component import Component

__version__ = "1.0.0"

_KEYS = ("uptime", "reconnects", "dropped", "heap_min", "rssi", "ip")
# value, unit, device class of each sensor entity; ip is text
_ENTITIES = (("uptime", "s", "duration"), ("reconnects", None, None), ("rssi", "dBm", "signal_strength"),
             ("ip", None, None))


class Stats(Component):
    __version__ = __version__  # what the loader reports in info
    platform = "sensor"

    def __init__(self, name, interval=300, **kwargs):
        if not isinstance(interval, (int, float)) or interval <= 0:
            raise ValueError("interval: must be a number of seconds > 0, not %r" % (interval,))
        Component.__init__(self, name, **kwargs)
        self.start(self.update, every=interval)

    def values(self):
        info = self.node.info()
        return {k: info[k] for k in _KEYS if k in info}

    async def update(self):
        await self.publish(self.values())

    def discovery(self):
        have = self.values()
        out = []
        for key, unit, cls in _ENTITIES:
            if key in have:
                d = {"value_template": "{{ value_json.%s }}" % key, "entity_category": "diagnostic"}
                if unit:
                    d["unit_of_measurement"] = unit
                    d["state_class"] = "measurement"
                if cls:
                    d["device_class"] = cls
                out.append((self.platform, "%s_%s" % (self.name, key), d))
        return out
