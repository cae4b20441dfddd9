# The component base class and the sensor API (docs/NODE.md "Writing a component").
import asyncio
import json
import time
from pysmartnode import log as _log
from pysmartnode import node as _node


def encode(value):
    """bytes for MQTT: bytes as is, True/False as ON/OFF, dict/list as compact JSON, anything else str()."""
    if isinstance(value, (bytes, bytearray)):
        return value
    if value is True or value is False:
        return b"ON" if value else b"OFF"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value).encode()
    return str(value).encode()


class Component:
    """Base of every component. The loader constructs a subclass as `cls(name, **constructor_args)`.

    Override what applies:
      platform          Home Assistant platform ("switch", "sensor", …); None: not announced
      qos               QoS of state publishes (1 for switch-like things, 0 for readings)
      async on_set(msg) a command arrived on <home>/<id>/<name>/set (bytes; retained ones never arrive)
      discovery()       [(platform, object_id, extra keys)] of the entities this component offers
    """

    __version__ = "0.0.0"
    platform = None
    qos = 0
    on_set = None

    def __init__(self, name, friendly_name=None, discover=True):
        self.node = _node.get()
        self.name = name
        self.friendly_name = friendly_name or name
        self.topic = self.node.prefix + "/" + name
        self.command_topic = self.topic + "/set"
        self.discover = discover
        self.log = _log.get(name)
        self.node.components[name] = self

    async def publish(self, value, qos=None, retain=True, subtopic=None):
        """Publish a state on <home>/<id>/<name>[/<subtopic>] (retained, this class's QoS by default)."""
        t = self.topic if subtopic is None else self.topic + "/" + subtopic
        await self.node.publish(t, encode(value), retain, self.qos if qos is None else qos)

    def start(self, coro_fn, *args, every=None):
        """Run `coro_fn(*args)` as a task inside this component's error boundary: an exception is logged
        and the task restarted after a back-off (2 s doubling to 5 min), other components never notice.
        With `every=seconds` it is called that often instead (a plain function works too)."""
        return self.node.spawn(self.name, None, coro_fn, every, args)

    async def restore_state(self, timeout=1):
        """The retained state of this component's own topic (bytes), or None: once connected, a retained
        value arriving within `timeout` s of subscribing (docs/PROTOCOL.md section 2)."""
        return await self.node.retained(self.topic, timeout)

    def discovery(self):
        if self.platform is None:
            return ()
        extra = {}
        if self.on_set is not None:
            extra["command_topic"] = self.command_topic
        return ((self.platform, self.name, extra),)


class Sensor(Component):
    """Base of sensors. A subclass lists its values and reads the hardware:

        VALUES = (("temperature", "°C", "temperature"), ("humidity", "%", "humidity"))  # name, unit, HA class
        async def _read(self):      # raw readings in VALUES order; raise (OSError …) on failure
            return t, h

    Every value gets `async <value>(publish=True)` (temperature, humidity, pressure, … or `value(name)`):
    a fresh reading with offset and precision applied, or None when the read failed (logged at error; a
    failed read publishes nothing, so no stale value ever looks new). The sensor reads every `interval`
    seconds (default: the device's interval) and publishes every `publish_interval` (default: interval).
    `precision` and `offset` are a number (for every value) or a dict by value name."""

    platform = "sensor"
    VALUES = ()

    def __init__(self, name, interval=None, publish_interval=None, precision=1, offset=0, **kw):
        Component.__init__(self, name, **kw)
        self.interval = interval or self.node.settings.interval
        self.publish_interval = max(publish_interval or self.interval, self.interval)
        self._prec = precision
        self._off = offset
        self._last = None  # dict of the last good reading
        self._lock = asyncio.Lock()
        self._published = None  # ticks_ms of the last publish
        self.start(self._loop)

    def _param(self, p, name, default):
        if isinstance(p, dict):
            return p.get(name, default)
        return p

    async def read(self, publish=True):
        """All values as a dict, or None when the read failed."""
        async with self._lock:
            try:
                raw = await self._read()
                if not isinstance(raw, (tuple, list)):
                    raw = (raw,)
                vals = {}
                for (vname, _u, _c), r in zip(self.VALUES, raw):
                    if r is None:
                        raise ValueError("no %s" % vname)
                    v = float(r) + self._param(self._off, vname, 0)
                    vals[vname] = round(v, self._param(self._prec, vname, 1))
            except Exception as e:  # any driver failure is one failed reading, never a crash
                self.log.error("read failed: %s" % _log.describe(e))
                self._last = None
                return None
            self._last = vals
        if publish:
            await self.publish(vals[self.VALUES[0][0]] if len(self.VALUES) == 1 else vals)
            self._published = time.ticks_ms()
        return vals

    async def value(self, name, publish=True):
        vals = await self.read(publish)
        return None if vals is None else vals.get(name)

    async def temperature(self, publish=True):
        return await self.value("temperature", publish)

    async def humidity(self, publish=True):
        return await self.value("humidity", publish)

    async def pressure(self, publish=True):
        return await self.value("pressure", publish)

    async def _loop(self):
        while True:
            due = self._published is None or \
                time.ticks_diff(time.ticks_ms(), self._published) >= self.publish_interval * 1000 - 50
            await self.read(publish=due)
            await asyncio.sleep(self.interval)

    def discovery(self):
        multi = len(self.VALUES) > 1
        out = []
        for vname, unit, cls in self.VALUES:
            d = {"state_class": "measurement"}
            if unit:
                d["unit_of_measurement"] = unit
            if cls:
                d["device_class"] = cls
            if multi:
                d["value_template"] = "{{ value_json.%s }}" % vname
            out.append((self.platform, "%s_%s" % (self.name, vname) if multi else self.name, d))
        return out
