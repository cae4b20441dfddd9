# The node: one MQTT connection, the topic router, device commands, info, discovery and the error
# boundaries that every component task runs in (docs/NODE.md).
import asyncio
import gc
import json
import time
import pysmartnode
from pysmartnode import log as _log
from pysmartnode.mqtt import MQTTClient

_node = None
_l = _log.get("node")
RESET = 3  # exit status of the unix port for "reset the board" (`fleet node run` restarts it)


def get():
    """The running node (components reach MQTT, settings and the router through it)."""
    return _node


class Node:
    def __init__(self, settings):
        global _node
        _node = self
        s = self.settings = settings
        self.id = s.device_id
        self.home = s.mqtt_home
        self.prefix = self.home + "/" + self.id
        self.components = {}  # name -> Component (routes /set, discovery)
        self.objects = {}  # name -> whatever the loader built (for `i2c: i2c` references)
        self.versions = {}  # name -> __version__, for info
        self.failed = {}  # name -> error of each component that did not load
        self.config_version = None  # version of the server config in force, else None
        self.source = None  # where the config in force came from
        self._subs = {}  # exact topic -> [handler(topic, msg, retained)]
        self._link = asyncio.Event()  # set by every (re)connect
        self._stop = asyncio.Event()
        self.reset_requested = False
        self.heap_min = gc.mem_free()
        self._t0 = time.ticks_ms()
        self.discovered = False
        self._batch = None  # the state restore in progress (see retained())
        self.client = MQTTClient(
            self.id, s.mqtt_host, s.mqtt_port, s.mqtt_user, s.mqtt_password, s.mqtt_keepalive,
            False, s.mqtt_tls, (self.prefix + "/status", b"offline", True, 1), s.mqtt_queue,
            max(4096, s.config_max + 256), self._on_connect, self._mqtt_log)
        from pysmartnode.confx import Exchange
        self.config = Exchange(self)

    # --- MQTT helpers for components -----------------------------------------------------------------
    async def publish(self, topic, msg, retain=False, qos=0):
        await self.client.publish(topic, msg, retain, qos)

    async def subscribe(self, topic, handler, qos=1):
        """Route messages on the exact `topic` to `await handler(topic, msg, retained)`."""
        hs = self._subs.get(topic)
        if hs is None:
            self._subs[topic] = [handler]
            await self.client.subscribe(topic, qos)
        else:
            hs.append(handler)

    async def unsubscribe(self, topic, handler):
        hs = self._subs.get(topic)
        if hs and handler in hs:
            hs.remove(handler)
            if not hs:
                del self._subs[topic]
                await self.client.unsubscribe(topic)

    async def wait_connected(self):
        while not await self.client.wait_connected(None):
            pass

    async def retained(self, topic, timeout=1):
        """The retained payload of `topic`, or None (docs/PROTOCOL.md section 2). Components asking at
        about the same time share one batch: each topic subscribed once connected, all held `timeout` s
        together, then unsubscribed; a single task waits, however many components restore."""
        while True:
            b = self._batch  # [topics, results, Event set when done, still taking topics]
            if b is None or b[2].is_set():
                b = self._batch = [{topic}, {}, asyncio.Event(), True]
                asyncio.create_task(self._collect_retained(b, timeout))  # ends after the batch
                break
            if b[3]:
                b[0].add(topic)
                break
            await b[2].wait()  # that batch is subscribed already: join the next one
        await b[2].wait()
        return b[1].get(topic)

    async def _collect_retained(self, b, timeout):
        try:
            await self.wait_connected()
            await asyncio.sleep_ms(50)  # components starting together join this batch
            b[3] = False
            for t in b[0]:
                await self.client.subscribe(t, 1)
            await asyncio.sleep(timeout)
            for t in b[0]:
                if t not in self._subs:
                    await self.client.unsubscribe(t)
        finally:
            b[2].set()

    def _mqtt_log(self, level, msg):
        _log.write(level if isinstance(level, int) else _log.LEVELS.index(level), "mqtt", msg)

    async def _on_connect(self):
        self._link.set()  # the work happens in _link_task, so the client's keeper is never held up

    # --- error boundaries ----------------------------------------------------------------------------
    def spawn(self, name, first=None, fn=None, every=None, args=(), kw=None):
        """A task in `name`'s error boundary: runs coroutine `first` (then, if it fails, `fn` again), or
        `fn(*args, **kw)`, once or every `every` seconds."""
        return asyncio.create_task(self.guard(name, fn, args, every, first, kw))

    async def guard(self, name, fn, args=(), every=None, first=None, kw=None):
        lg = _log.get(name)
        backoff = 2
        while True:
            try:
                if first is not None:
                    c, first = first, None
                    await c
                else:
                    r = fn(*args, **kw) if kw else fn(*args)
                    if type(r).__name__ in ("generator", "coroutine"):
                        await r
                if every is None:
                    return
                backoff = 2
                await asyncio.sleep(every)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                lg.exception(e, "crashed, again in %d s" % backoff)
                if fn is None:
                    return  # a started coroutine cannot be run again
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 300)

    # --- router --------------------------------------------------------------------------------------
    async def _dispatch(self):
        pre = self.prefix + "/"
        sim = self.home + "/_sim/" + self.id + "/"
        async for topic, msg, retained in self.client:
            if self._stop.is_set():
                break  # restarting: what is still queued (a second copy of a config …) waits for the next boot
            try:
                b = self._batch
                if b is not None and topic in b[0] and not b[2].is_set():
                    if retained and topic not in b[1]:
                        b[1][topic] = bytes(msg)
                    continue
                hs = self._subs.get(topic)
                if hs:
                    for h in list(hs):
                        await h(topic, msg, retained)
                elif topic.startswith(pre) and topic.endswith("/set"):
                    if retained:
                        _l.warning("ignored retained command on %s" % topic)
                        continue
                    name = topic[len(pre):-4]
                    if name == "cmd":
                        await self.command(msg)
                        continue
                    c = self.components.get(name)
                    if c is None or c.on_set is None:
                        _l.warning("no component takes commands on %s" % topic)
                    else:
                        await c.on_set(msg)
                elif topic == pre + "config":
                    await self.config.piece(msg)
                elif topic == "homeassistant/status":
                    if msg == b"online":
                        await self.discover()
                elif pysmartnode.VIRTUAL and topic.startswith(sim) and topic.endswith("/set"):
                    if not retained:
                        from pysmartnode import virtual
                        virtual.sim_input(topic[len(sim):-4], msg)
                else:
                    _l.debug("dropped %s: no route" % topic)
            except Exception as e:  # a bad payload or a failing handler: logged with its topic, dropped
                _l.exception(e, "%s %r" % (topic, bytes(msg[:64])))

    async def command(self, msg):
        cmd = msg.strip().decode()
        if cmd == "restart":
            _l.info("restart on command")
            await self.restart()
        elif cmd == "reconfig":
            self.config.want()
        elif cmd == "info":
            await self.publish_info()
        else:
            _l.error("unknown command %r (restart, reconfig, info)" % cmd)

    async def restart(self, delay=0.3):
        """A clean restart: `offline` on the status topic, the link closed, the board reset."""
        await asyncio.sleep(delay)  # lets queued logs and acks leave
        try:
            await self.client.publish(self.prefix + "/status", b"offline", True, 1)
            await self.client.close()
        except Exception as e:
            _l.error("close: %s" % _log.describe(e))
        self.reset_requested = True
        self._stop.set()

    # --- info and discovery --------------------------------------------------------------------------
    def info(self):
        gc.collect()  # heap_free then means what is really free, comparable between reports
        d = {"fw": pysmartnode.__version__, "platform": pysmartnode.platform, "config": self.config_version,
             "components": self.versions, "failed": self.failed, "heap_free": gc.mem_free(),
             "heap_min": self.heap_min, "uptime": time.ticks_diff(time.ticks_ms(), self._t0) // 1000}
        st = self.client.stats()
        d["reconnects"] = st.get("reconnects", 0)
        d["dropped"] = st.get("dropped", 0)
        if not pysmartnode.VIRTUAL:
            from pysmartnode import net
            net.add_info(d)
        if _log.synced:
            d["time"] = int(_log.unix_time())
        return d

    async def publish_info(self):
        await self.publish(self.prefix + "/info", json.dumps(self.info()), True, 0)

    def device_block(self):
        s = self.settings
        return {"identifiers": ["smartfleet_" + self.id], "name": s.device_name or self.id,
                "model": s.device_model or pysmartnode.platform, "manufacturer": "SmartFleet",
                "sw_version": pysmartnode.__version__}

    def discovery_payload(self, comp, obj, extra):
        d = {"name": comp.friendly_name if obj == comp.name else
             comp.friendly_name + " " + obj[len(comp.name) + 1:].replace("_", " "),
             "unique_id": self.id + "_" + obj, "state_topic": comp.topic,
             "availability_topic": self.prefix + "/status", "payload_available": "online",
             "payload_not_available": "offline", "device": self.device_block()}
        d.update(extra)
        return json.dumps(d)

    async def discover(self):
        """Publish every component's discovery (retained) and remove what the last config announced and
        this one does not (an empty retained payload). The topics sent are kept in `discovery.txt`."""
        sent = []
        complete = True  # else nothing is removed: a component that failed to announce is not gone
        for comp in list(self.components.values()):
            if not comp.discover:
                continue
            try:
                for platform, obj, extra in comp.discovery():
                    t = "homeassistant/%s/%s/%s/config" % (platform, self.id, obj)
                    sent.append(t)
                    for attempt in (1, 2, 3):
                        try:
                            await self.publish(t, self.discovery_payload(comp, obj, extra), True, 1)
                            break
                        except MemoryError:  # a peak just after connecting: a moment later it fits
                            if attempt == 3:
                                raise
                            gc.collect()
                            await asyncio.sleep_ms(300)
            except MemoryError:
                raise  # the after-connect work is retried as a whole
            except Exception as e:
                complete = False
                _l.error("discovery of %s: %s" % (comp.name, _log.describe(e)))
            gc.collect()
        try:
            with open("discovery.txt") as f:
                old = [t.strip() for t in f]
        except OSError:
            old = []
        if not complete:
            return
        for t in old:
            if t and t not in sent:
                await self.publish(t, b"", True, 1)
                _l.info("removed discovery %s" % t)
        if old != sent:
            with open("discovery.txt", "w") as f:
                for t in sent:
                    f.write(t + "\n")
        self.discovered = True

    # --- lifetime ------------------------------------------------------------------------------------
    async def _link_task(self):
        first = True
        while True:
            await self._link.wait()
            self._link.clear()
            try:
                await self.publish_info()
                if self.settings.receive_config:
                    self.config.want()
                if first:
                    await self.discover()
                    await self.config.after_boot()
                    first = False
            except Exception as e:  # e.g. a MemoryError at a peak: the same work again in 5 s
                _l.exception(e, "after connect, again in 5 s")
                gc.collect()
                await asyncio.sleep(5)
                self._link.set()

    async def _housekeeping(self):
        from pysmartnode import watchdog
        last_info = time.ticks_ms()
        while True:
            watchdog.feed()
            free = gc.mem_free()
            if free < self.heap_min:
                self.heap_min = free
            if time.ticks_diff(time.ticks_ms(), last_info) >= self.settings.info_interval * 1000:
                last_info = time.ticks_ms()
                if self.client.isconnected():
                    await self.publish_info()
            await asyncio.sleep(1)

    async def start(self):
        """Start the link and the node's own tasks; they live as long as the node."""
        # Subscribed before the first connect: the client sends them right after CONNACK, before on_connect.
        await self.client.subscribe(self.prefix + "/+/set", 1)
        await self.client.subscribe(self.prefix + "/config", 1)
        await self.client.subscribe("homeassistant/status", 1)
        if pysmartnode.VIRTUAL:
            await self.client.subscribe(self.home + "/_sim/" + self.id + "/+/set", 1)
        self.client.start()
        # The node's own tasks, each in an error boundary that starts it again (a MemoryError at a peak
        # must not end the router or the log pump for good); they live as long as the node.
        self.spawn("node", None, self._dispatch)
        self.spawn("node", None, self._link_task)
        self.spawn("node", None, self._housekeeping)
        self.spawn("log", None, _log.pump, None, (self.client, self.home, self.id))
        self.spawn("config", None, self.config.run)
        if pysmartnode.VIRTUAL:
            from pysmartnode import virtual
            sim = self.home + "/_sim/" + self.id + "/"

            async def out(sub, payload):
                await self.client.publish(sim + sub, payload, True, 0)

            self.spawn("virtual", None, virtual.pump, None, (out,))

    async def wait_stopped(self):
        await self._stop.wait()
