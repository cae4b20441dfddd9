"""The hub service: one asyncio process that runs the jobs of `hub.hjson` and is a device on the protocol.

- One MQTT connection (`FleetClient`) for all jobs, reconnected with backoff; `subscribe()` hands each
  job the messages of its filters, whatever reconnects happen in between.
- Each job runs as a named task with its own error boundary: an exception is logged, reported on
  `<home>/<hub>/jobs` and the job restarts with exponential backoff while the others go on.
- The hub has `status` (with a Will), `info`, logs on `<home>/log/<level>/<hub>`, `cmd/set` and Home
  Assistant discovery, as any node (PROTOCOL.md sections 1, 3, 5, 6).
- Optionally it runs its own Mosquitto bridged to the home broker (`hub.bridge`), so the jobs and rules
  work while the car is away and their messages go home, queued, when it is back.
- It counts the event-loop time each job's tasks use (a task factory wraps the coroutines of tasks
  created in a job's context), for the stats job.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import json
import logging
import socket
import ssl
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet import __version__, topics
from fleet.broker import Mosquitto
from fleet.errors import BrokerError, ConfigError
from fleet.mqtt import BrokerSettings, FleetClient, Will
from hub import bridge, config
from hub.config import HubConfig
from hub.job import Job

log = logging.getLogger("hub.service")

LOG_BUFFER = 500  # log lines kept while offline (oldest dropped first)
QUEUE_LIMIT = 50_000  # messages a subscription holds for a slow reader before it drops new ones
PUBLISH_WAIT = 10.0  # seconds a publish waits for the link before it fails


# --- loop time per job -------------------------------------------------------------------------


class _Meter:
    """Event-loop seconds used by the tasks of one job."""

    __slots__ = ("busy",)

    def __init__(self) -> None:
        self.busy = 0.0


_meter: contextvars.ContextVar[_Meter | None] = contextvars.ContextVar("hub_meter", default=None)


class _Timed(Coroutine[Any, Any, Any]):
    """A task's coroutine, run step by step with the time of each step added to a meter."""

    __slots__ = ("coro", "meter")

    def __init__(self, coro: Coroutine[Any, Any, Any], meter: _Meter) -> None:
        self.coro = coro
        self.meter = meter

    def send(self, value: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.coro.send(value)
        finally:
            self.meter.busy += time.perf_counter() - t0

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        t0 = time.perf_counter()
        try:
            return self.coro.throw(typ) if val is None and tb is None else self.coro.throw(typ, val, tb)
        finally:
            self.meter.busy += time.perf_counter() - t0

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        return self.coro.__await__()


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    """Tasks created in a job's context (its own, and those it starts) count towards its meter."""
    context = kwargs.get("context")
    meter = context.get(_meter) if context is not None else _meter.get()
    if meter is not None and asyncio.iscoroutine(coro):
        coro = _Timed(coro, meter)
    return asyncio.Task(coro, loop=loop, **kwargs)


# --- subscriptions -----------------------------------------------------------------------------


class _Subscription:
    """The messages of some filters, in arrival order, for one `async for`."""

    def __init__(self, filters: tuple[str, ...]) -> None:
        self.filters = filters
        self.items: deque[aiomqtt.Message] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.dropped = 0

    def wants(self, topic: str, via: set[str] | None = None) -> bool:
        """Whether the message is for this reader; `via`: the filters the broker delivered this copy for."""
        if via is None:
            return any(topics.matches(f, topic) for f in self.filters)
        # One copy per reader: the copy that came for the first of its filters that matches.
        first = next((f for f in self.filters if topics.matches(f, topic)), None)
        return first in via

    def put(self, msg: aiomqtt.Message) -> None:
        if len(self.items) >= QUEUE_LIMIT:
            self.dropped += 1
            return
        self.items.append(msg)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> aiomqtt.Message:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class _Inbox(asyncio.Queue):  # type: ignore[type-arg]
    """aiomqtt's incoming queue, made a hand-over: each message goes to the hub's dispatcher as paho decodes
    it. aiomqtt's own `async for` costs a task per message, too slow for the stats job's 20k msg/s."""

    def __init__(self, dispatch: Any, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.dispatch = dispatch

    def put_nowait(self, item: aiomqtt.Message) -> None:
        self.dispatch(item)


class _BufferedSocket:
    """The bulk link's socket as paho sees it, read 16 KiB at a time: paho reads a packet in three or more
    `recv` calls, and aiomqtt's reader calls paho again while `pending()` reports buffered bytes. The
    socket is read once per reader callback (the second read in one callback says "nothing more"), so
    a steady stream cannot keep the callback, and the loop, busy."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock = sock
        self._loop = loop
        self._buf = b""
        self._at = 0
        self._read = False  # the socket was read in this loop iteration

    def recv(self, n: int) -> bytes:
        if self._at >= len(self._buf):
            if self._read:
                raise BlockingIOError  # paho keeps its partial packet; the reader is called again
            self._read = True
            self._loop.call_soon(self._next_iteration)
            self._buf, self._at = self._sock.recv(16384), 0  # BlockingIOError when empty, as paho expects
        out = self._buf[self._at : self._at + n]
        self._at += len(out)
        return out

    def _next_iteration(self) -> None:
        self._read = False

    def pending(self) -> int:
        return len(self._buf) - self._at

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Link:
    """One MQTT connection of the hub, reconnected with backoff, and the readers of its subscriptions.
    Subscriptions outlive reconnections: the link subscribes again on every connect."""

    def __init__(self, service: HubService, name: str, protocols: tuple[aiomqtt.ProtocolVersion, ...],
                 will: Will | None = None, buffered: bool = False) -> None:
        self.service = service
        self.buffered = buffered
        self.name = name
        self.protocols = protocols
        self.will = will
        self.client: FleetClient | None = None
        self.connected = asyncio.Event()
        self.down = asyncio.Event()  # set when the link drops, cleared when it is up again
        self.reconnects = 0
        self.task: asyncio.Task[None] | None = None
        self.subs: list[_Subscription] = []
        self.routes: dict[str | tuple[str | int, ...], tuple[_Subscription, ...]] = {}
        self.count: Counter[str] = Counter()  # filter → readers
        self.qos: dict[str, int] = {}
        self.ids: dict[str, int] = {}  # filter → its MQTT 5 subscription identifier
        self.id_filter: dict[int, str] = {}

    @contextlib.asynccontextmanager
    async def subscription(self, filters: tuple[str, ...], qos: int) -> AsyncIterator[_Subscription]:
        sub = _Subscription(filters)
        self.subs.append(sub)
        self.routes.clear()
        new = [f for f in filters if self.count[f] == 0]
        for f in filters:
            self.count[f] += 1
            self.qos[f] = max(qos, self.qos.get(f, 0))
        client = self.client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, BrokerError):  # the link is down: subscribed on reconnect
                for f in new:
                    await self._subscribe(client, f, qos)
        try:
            yield sub
        finally:
            self.subs.remove(sub)
            self.routes.clear()
            gone = []
            for f in filters:
                self.count[f] -= 1
                if self.count[f] <= 0:
                    del self.count[f], self.qos[f]
                    gone.append(f)
            client = self.client
            if client is not None and gone and not self.service._stopping.is_set():  # else the link closes anyway
                with contextlib.suppress(aiomqtt.MqttError, BrokerError, TimeoutError):
                    async with asyncio.timeout(2):  # a link flooded with messages must not hold a job up
                        for f in gone:
                            await client.client.unsubscribe(f)

    async def _subscribe(self, client: FleetClient, topic_filter: str, qos: int) -> None:
        """Subscribe with an MQTT 5 subscription identifier: Mosquitto 2 sends a client one copy of a message
        per subscription it matches (`allow_duplicate_messages`), and the identifier says which copy is
        for which readers."""
        sub_id = self.ids.setdefault(topic_filter, len(self.ids) + 1)
        self.id_filter[sub_id] = topic_filter
        props = None
        if client.is_v5:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        await client.client.subscribe(topic_filter, qos, properties=props)

    def dispatch(self, msg: aiomqtt.Message) -> None:
        try:
            self._route(msg)
        except Exception:  # called from paho's callback: an error here must not cut the link
            log.exception("hub %s: dispatch of %s", self.service.id, msg.topic)

    def _route(self, msg: aiomqtt.Message) -> None:
        topic = msg.topic.value
        if msg.retain and topic.endswith("/set"):
            return  # a command is an event, never a retained state
        props = msg.properties
        ids = getattr(props, "SubscriptionIdentifier", None) if props is not None else None
        key = (topic, *ids) if ids else topic
        subs = self.routes.get(key)
        if subs is None:
            via = {self.id_filter.get(i, "") for i in ids} if ids else None
            subs = tuple(s for s in self.subs if s.wants(topic, via))
            if len(self.routes) > 20_000:
                self.routes.clear()
            self.routes[key] = subs
        for sub in subs:
            sub.put(msg)

    async def run(self, on_connect: Callable[[FleetClient], Awaitable[None]] | None = None) -> None:
        """Connect, subscribe, call `on_connect`, hand messages on until the link drops; again, forever."""
        service, settings = self.service, self.service.link_settings
        delay = 1.0
        while True:
            try:
                client = FleetClient(settings, f"{service.home}-{service.id}-{self.name}-{uuid.uuid4().hex[:6]}",
                                     will=self.will, queue_type=functools.partial(_Inbox, self.dispatch),
                                     protocols=self.protocols)
                async with client:
                    self.client = client
                    paho_client = getattr(client.client, "_client", None)  # aiomqtt keeps paho private
                    sock = getattr(paho_client, "_sock", None)
                    # Plain TCP only: TLS keeps bytes of its own that aiomqtt drains through pending().
                    if self.buffered and isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket):
                        paho_client._sock = _BufferedSocket(sock, asyncio.get_running_loop())
                    for f, qos in list(self.qos.items()):
                        await self._subscribe(client, f, qos)
                    if on_connect is not None:
                        await on_connect(client)
                    self.down.clear()
                    self.connected.set()
                    delay = 1.0
                    log.info("hub %s: %s link connected to %s", service.id, self.name, settings.public_url)
                    # Messages go to dispatch() from the inbox (its route cache does FleetClient's foreign-
                    # message check once per topic): this loop only waits for the link to end.
                    async for _ in client.client.messages:
                        pass
                    raise aiomqtt.MqttError("the broker closed the connection")
            except (BrokerError, aiomqtt.MqttError) as exc:
                if self.connected.is_set():
                    self.reconnects += 1
                log.warning("hub %s: %s link to %s: %s; retrying in %.0f s", service.id, self.name,
                            settings.public_url, exc, delay)
            finally:
                self.connected.clear()
                self.down.set()
                self.client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.subs)


# --- logs over MQTT ----------------------------------------------------------------------------


class _MqttLogHandler(logging.Handler):
    """Queues each log line for `<home>/log/<level>/<hub>`; safe from job threads (python-OBD's)."""

    def __init__(self, service: HubService) -> None:
        super().__init__()
        self.service = service

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += " | " + traceback.format_exception_only(record.exc_info[1])[-1].strip()
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            job = record.name.rsplit(".", 1)[-1]
            level = record.levelname.lower()
            self.service._queue_log(level if level in topics.LOG_LEVELS else "info", f"{stamp} {job}: {message}")
        except Exception:  # a log line must never break the code that logs it
            self.handleError(record)


# --- the service -------------------------------------------------------------------------------


class HubService:
    """The hub. `await HubService(cfg, settings).run()` runs until cancelled or `stop()`; or
    `async with HubService(...) as hub:` runs it in a task of its own."""

    def __init__(self, cfg: HubConfig, settings: BrokerSettings) -> None:
        self.config = cfg
        self.settings = settings  # the broker given on the command line: home's, or the local one's bridge peer
        self.id = cfg.id
        self.home = settings.home
        self.workdir = cfg.workdir
        self.link_settings = settings  # the broker the jobs use (the local one when it runs)
        self.local: Mosquitto | None = None
        self.started = time.monotonic()
        v5_first = (aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311)
        self._main = _Link(self, "main", v5_first, Will(topics.status(self.home, self.id)))
        # Bulk subscriptions (the stats job's `#`) on a 3.1.1 connection of their own, started on first use:
        # paho decodes MQTT 5 properties on every message, which halves the rate it can take.
        self._bulk = _Link(self, "bulk", (aiomqtt.ProtocolVersion.V311,), buffered=True)
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # something to publish: job states or log lines
        self._jobs: dict[str, Job] = {}
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._states: dict[str, dict[str, Any]] = {}
        self._states_dirty = False
        self._meters: dict[str, _Meter] = {"hub": _Meter()}
        self._entities: dict[str, str] = {}  # discovery topic → payload
        self._logs: deque[tuple[str, str]] = deque(maxlen=LOG_BUFFER)
        self._logs_dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._runner: asyncio.Task[None] | None = None
        self._running = False
        self._log_base = logging.getLogger(f"smartfleet.hub.{self.home}.{self.id}")
        self._handler = _MqttLogHandler(self)
        self.log = self.logger("hub")

    # --- the Hub protocol, as jobs see it ---

    def topic(self, *parts: str) -> str:
        return "/".join((self.home, self.id, *parts))

    async def publish(self, topic: str, payload: str | bytes | None = None, qos: int = 0, retain: bool = False,
                      *, response_topic: str | None = None, correlation: bytes | None = None) -> None:
        """Publish through the hub's connection; waits up to PUBLISH_WAIT s for the link, else BrokerError."""
        client = self._main.client
        if client is None or not self._main.connected.is_set():
            try:
                await asyncio.wait_for(self._main.connected.wait(), PUBLISH_WAIT)
            except TimeoutError:
                raise BrokerError(self.link_settings.public_url, "not connected") from None
            client = self._main.client
            assert client is not None
        await client.publish(topic, payload, qos, retain, response_topic=response_topic, correlation=correlation)

    def subscribe(self, topic_filter: str | Sequence[str], qos: int = 1, *,
                  bulk: bool = False) -> contextlib.AbstractAsyncContextManager[AsyncIterator[aiomqtt.Message]]:
        filters = (topic_filter,) if isinstance(topic_filter, str) else tuple(topic_filter)
        if not bulk:
            return self._main.subscription(filters, qos)
        if self._bulk.task is None and self._running:
            # Started on the first bulk subscription, cancelled when the service stops.
            self._bulk.task = self._create(self._bulk.run(), "hub-link-bulk", self._meters["hub"])
        return self._bulk.subscription(filters, qos)

    def job(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def job_names(self) -> list[str]:
        return list(self.config.jobs)

    def busy_time(self, job: str) -> float:
        meter = self._meters.get(job)
        return meter.busy if meter else 0.0

    def logger(self, job: str) -> logging.Logger:
        return self._log_base.getChild(job)

    async def announce(self, platform: str, obj: str, entity: dict[str, Any]) -> None:
        topic, payload = self._entity(platform, obj, entity)
        client = self._main.client
        if client is not None and self._main.connected.is_set():
            await client.publish(topic, payload, 1, True)

    def _entity(self, platform: str, obj: str, entity: dict[str, Any]) -> tuple[str, str]:
        """Keep a discovery message (sent on every connect and when Home Assistant comes online)."""
        payload = {
            "name": obj.replace("_", " "), **entity, "unique_id": f"{self.id}_{obj}",
            "availability_topic": topics.status(self.home, self.id),
            "payload_available": "online", "payload_not_available": "offline",
            "device": {"identifiers": [f"smartfleet_{self.id}"], "name": self.id, "model": "SmartFleet hub",
                       "manufacturer": "SmartFleet", "sw_version": __version__},
        }
        topic = topics.discovery(platform, self.id, obj)
        self._entities[topic] = json.dumps(payload, separators=(",", ":"))
        return topic, self._entities[topic]

    # --- figures the service itself shows ---

    @property
    def states(self) -> dict[str, dict[str, Any]]:
        """What `<home>/<hub>/jobs` says: job → state, restarts, error."""
        return self._states

    @property
    def dropped(self) -> int:
        """Messages dropped because a job read them too slowly."""
        return self._main.dropped + self._bulk.dropped

    def info(self) -> dict[str, Any]:
        return {
            "fw": __version__, "platform": "linux",
            "components": {name: __version__ for name in self.config.classes},
            "failed": {name: s["error"] for name, s in self._states.items() if s["state"] == "failed"},
            "uptime": int(time.monotonic() - self.started), "reconnects": self._main.reconnects,
            "dropped": self._logs_dropped, "time": int(time.time()),
        }

    # --- running ---

    async def __aenter__(self) -> HubService:
        # Started here, ends in __aexit__ (stop, then awaited): the whole service.
        self._runner = asyncio.create_task(self.run(), name=f"hub-{self.id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        if self._runner is not None:
            await self._runner

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._main.connected.wait(), timeout)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._loop_thread = loop, threading.get_ident()
        previous_factory = loop.get_task_factory()
        loop.set_task_factory(_task_factory)
        self._log_base.setLevel(logging.DEBUG if self.config.debug else logging.INFO)
        self._log_base.addHandler(self._handler)
        self.workdir.mkdir(parents=True, exist_ok=True)
        tasks: list[asyncio.Task[None]] = []
        try:
            if self.config.local_broker.enabled:
                self.local = await asyncio.to_thread(self._start_local)
                self.link_settings = BrokerSettings(self.local.url, self.home)
            # All started here and cancelled in the finally below, after the jobs stopped and the hub said
            # offline: the link (connection + dispatch), the outbox (job states, logs), commands, info.
            self._running = True
            for coro, name in ((self._main.run(self._on_connect), "link"), (self._outbox(), "outbox"),
                               (self._commands(), "commands"), (self._info_loop(), "info")):
                tasks.append(self._create(coro, f"hub-{name}", self._meters["hub"]))
            if self.local is not None:
                tasks.append(self._create(self._watch_local(), "hub-local-broker", self._meters["hub"]))
            self._start_jobs()
            await self._stopping.wait()
        finally:
            self._stopping.set()
            await self._stop_jobs()
            await self._goodbye()
            self._running = False
            if self._bulk.task is not None:
                tasks.append(self._bulk.task)
                self._bulk.task = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.local is not None:
                await asyncio.to_thread(self.local.stop)
            self._log_base.removeHandler(self._handler)
            if loop.get_task_factory() is _task_factory:
                loop.set_task_factory(previous_factory)

    @staticmethod
    def _create(coro: Coroutine[Any, Any, None], name: str, meter: _Meter) -> asyncio.Task[None]:
        context = contextvars.copy_context()
        context.run(_meter.set, meter)
        return asyncio.get_running_loop().create_task(coro, name=name, context=context)

    # --- the link ---

    async def _on_connect(self, client: FleetClient) -> None:
        """Say online, and everything a newcomer should know: info, discovery, job states."""
        await client.publish(topics.status(self.home, self.id), "online", 1, True)
        await client.publish(topics.info(self.home, self.id), json.dumps(self.info()), 0, True)
        for topic, payload in list(self._entities.items()):
            await client.publish(topic, payload, 1, True)
        self._states_dirty = True
        self._wake.set()

    async def _goodbye(self) -> None:
        """Say offline (and the jobs stopped) before the link closes: a clean shutdown is no lost Will."""
        client = self._main.client
        if client is None or not self._main.connected.is_set():
            return
        with contextlib.suppress(aiomqtt.MqttError, BrokerError, TimeoutError):
            async with asyncio.timeout(3):
                await self._flush()
                await client.publish(topics.status(self.home, self.id), "offline", 1, True)

    # --- outgoing: job states and log lines ---

    def _queue_log(self, level: str, line: str) -> None:
        if len(self._logs) == self._logs.maxlen:
            self._logs_dropped += 1
        self._logs.append((level, line))
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def _outbox(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._main.connected.is_set():
                continue  # the link sets _wake again when it is back
            # Both started here and ended below: a publish on a link that just died would wait for
            # aiomqtt's 10 s timeout, so the flush gives up when the link goes down (lines stay queued).
            flush = asyncio.create_task(self._flush(), name="hub-outbox-flush")
            down = asyncio.create_task(self._main.down.wait(), name="hub-outbox-down")
            try:
                await asyncio.wait((flush, down), return_when=asyncio.FIRST_COMPLETED)
            finally:
                flush.cancel()
                down.cancel()
            if flush.done() and not flush.cancelled() and flush.exception() is not None:
                log.warning("hub %s: outbox: %s", self.id, flush.exception())

    async def _flush(self) -> None:
        client = self._main.client
        if client is None:
            return
        if self._states_dirty:
            self._states_dirty = False
            await client.publish(self.topic("jobs"), json.dumps(self._states), 1, True)
        if self._logs_dropped:
            dropped, self._logs_dropped = self._logs_dropped, 0
            self.log.warning("%d log lines dropped while offline", dropped)
        while self._logs:
            level, line = self._logs[0]
            await client.publish(topics.log(self.home, level, self.id), line, 0, False)
            self._logs.popleft()

    def _set_state(self, name: str, state: str, **fields: Any) -> None:
        entry = self._states.setdefault(name, {"state": state, "restarts": 0, "error": None})
        entry.update(state=state, **fields)
        self._states_dirty = True
        self._wake.set()

    # --- commands and info ---

    async def _commands(self) -> None:
        cmd = topics.command(self.home, self.id, "cmd")
        async with self.subscribe([cmd, topics.HA_STATUS]) as messages:
            async for msg in messages:
                payload = bytes(msg.payload or b"").decode(errors="replace").strip()  # type: ignore[arg-type]
                if msg.topic.value == topics.HA_STATUS:
                    if payload == "online" and not msg.retain:
                        for topic, entity in list(self._entities.items()):
                            await self.publish(topic, entity, 1, True)
                elif payload == "info":
                    await self.publish(topics.info(self.home, self.id), json.dumps(self.info()), 0, True)
                elif payload == "restart":
                    self.log.warning("restarting all jobs (cmd/set restart)")
                    await self._stop_jobs()
                    self._start_jobs()
                elif payload == "reload":
                    await self.reload()
                else:
                    self.log.warning("dropped %s: unknown command %r (restart, info, reload)", cmd, payload[:40])

    async def reload(self) -> None:
        """Read `hub.hjson` again and restart the jobs with it; a file with errors changes nothing."""
        try:
            fresh = await asyncio.to_thread(config.load, self.config.path)
        except ConfigError as exc:
            for issue in exc.issues:
                self.log.error("reload refused: %s", issue)
            return
        if (fresh.id, fresh.local_broker) != (self.config.id, self.config.local_broker):
            self.log.warning("reload: id and local_broker take effect when the service restarts")
            fresh.id, fresh.local_broker = self.config.id, self.config.local_broker
        self.log.info("reloaded %s", fresh.path)
        await self._stop_jobs()
        self.config = fresh
        self._start_jobs()

    async def _info_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.info_interval)
            if self._main.connected.is_set():
                with contextlib.suppress(aiomqtt.MqttError, BrokerError):
                    await self.publish(topics.info(self.home, self.id), json.dumps(self.info()), 0, True)

    def _hub_entities(self) -> None:
        for name in self.config.jobs:
            self._entity("sensor", f"job_{name}", {
                "name": f"{name} job", "state_topic": self.topic("jobs"), "entity_category": "diagnostic",
                "value_template": "{{ value_json.%s.state }}" % name})  # noqa: UP031  (Jinja braces)
        self._entity("button", "restart", {"name": "restart jobs", "payload_press": "restart",
                                           "command_topic": topics.command(self.home, self.id, "cmd")})

    # --- jobs ---

    def _start_jobs(self) -> None:
        self._hub_entities()
        for name in self.config.disabled:
            self._set_state(name, "off", error=None)
        for name in self.config.jobs:
            if name in self.config.failed:
                self._set_state(name, "failed", error=self.config.failed[name])
                self.logger(name).error("not loaded: %s", self.config.failed[name])
                continue
            self._set_state(name, "starting", error=None)
            with contextlib.suppress(Exception):  # a constructor that raises is retried by the supervisor
                self._jobs[name] = self.config.classes[name](self, self.config.section(name))
            meter = self._meters.setdefault(name, _Meter())
            # Started here, one per job; ends when _stop_jobs cancels it (or the job's run() returns).
            self._supervisors[name] = self._create(self._supervise(name), f"hub-job-{name}", meter)

    async def _stop_jobs(self) -> None:
        tasks = list(self._supervisors.values())
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                log.error("hub %s: job task %s did not stop within 10 s", self.id, task.get_name())
        for name in self._supervisors:
            self._set_state(name, "stopped")
        self._supervisors.clear()
        self._jobs.clear()

    async def _supervise(self, name: str) -> None:
        cls = self.config.classes[name]
        jlog = self.logger(name)
        delay = self.config.restart_min
        while True:
            started = time.monotonic()
            try:
                job = self._jobs.get(name)
                if job is None:
                    job = self._jobs[name] = cls(self, self.config.section(name))
                self._set_state(name, "running")
                await job.run()
                self._set_state(name, "finished")
                return
            except Exception as exc:
                error = traceback.format_exception_only(exc)[-1].strip()
                jlog.error("failed: %s", error, exc_info=exc)
                if time.monotonic() - started > self.config.restart_max:
                    delay = self.config.restart_min  # it ran well for a while: start the backoff afresh
                self._jobs.pop(name, None)
                restarts = self._states[name]["restarts"] + 1
                self._set_state(name, "restarting", error=error, restarts=restarts, retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.restart_max)

    # --- the local broker ---

    def _start_local(self) -> Mosquitto:
        lb = self.config.local_broker
        broker = Mosquitto(Path(self.workdir) / "broker", port=lb.port, host=lb.host, persistence=True)
        remote = self.settings
        if remote.tls:  # the bridge's CA, certificate and key, where the broker's own user can read them
            remote = dataclasses.replace(remote, **{k: broker.copy_in(v) for k in ("ca", "cert", "key")
                                                    if (v := getattr(remote, k))})
        lines = bridge.bridge_lines(self.config, remote)
        broker.extra = ["set_tcp_nodelay true", *lines]  # as FleetClient: no Nagle delays
        broker.start()
        log.info("hub %s: local broker on %s, bridged to %s", self.id, broker.url, self.settings.public_url)
        return broker

    async def _watch_local(self) -> None:
        while True:
            await asyncio.sleep(2)
            local = self.local
            if local is not None and local.proc is not None and local.proc.poll() is not None:
                self.log.error("local broker exited with %s; starting it again", local.proc.returncode)
                try:
                    await asyncio.to_thread(local.restart)
                except BrokerError as exc:
                    self.log.error("local broker: %s", exc)
