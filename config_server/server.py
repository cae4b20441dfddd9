"""The config server on MQTT: answers config requests with pieces, pushes changed configs, records acks,
status, info and logs (docs/PROTOCOL.md sections 4 and 7).

    async with ConfigServer(settings, ServerOptions(devices=Path("devices"), state=…)) as server:
        await stop.wait()  # serving meanwhile; leaving the block stops it cleanly

Several processes may run on one machine with the same state file: requests, acks and logs reach one of
them each through an MQTT 5 shared subscription, and only the holder of the `pusher` lease in the state
file pushes configs when a file changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from config_server.declarations import REPO, Library
from config_server.pieces import MAX_PIECE, parse_version, pieces, signature, unchanged
from config_server.registry import Change, Registry, Served
from config_server.state import State, ack_detail, default_path
from fleet import topics
from fleet.errors import BrokerError
from fleet.mqtt import BrokerSettings, FleetClient, Will

log = logging.getLogger("config_server")

SHARE_GROUP = "fleet-config"
MAX_REQUEST = 4096  # a request is ~100 bytes; anything far bigger is not one
MAX_LOG_LINE = 4096
DEFAULT_PIECE = 1024
ACK_STATES = ("accepted", "refused", "applied")
LEASE = "pusher"


def default_server_id() -> str:
    return re.sub(r"[^a-z0-9_-]", "-", f"{socket.gethostname()}-{os.getpid()}".lower())[:32]


@dataclass
class ServerOptions:
    devices: Path
    state: Path = field(default_factory=default_path)
    library: Path = REPO
    keys: Path | None = None
    server_id: str = field(default_factory=default_server_id)
    poll: float = 0.5  # seconds between scans of the registry folder
    lease_ttl: float = 6.0
    log_max_age: float = 14 * 86400.0
    log_max_bytes: int = 64 * 2**20
    flush_every: float = 0.2


@dataclass
class Counters:
    """What this process did, for logs, tests and the bench."""

    requests: int = 0
    replies: int = 0
    unchanged: int = 0
    pushes: int = 0
    pieces: int = 0
    acks: int = 0
    logs: int = 0
    dropped: int = 0
    unknown: int = 0


class ConfigServer:
    """The server; an async context manager that connects on entry and stops cleanly on exit."""

    def __init__(self, settings: BrokerSettings, options: ServerOptions) -> None:
        self.settings = settings
        self.options = options
        self.home = settings.home
        self.state = State(options.state)
        self.registry = Registry(options.devices, Library(options.library), self.state, options.keys)
        self.counters = Counters()
        self.online: set[str] = set()
        self.pusher = False
        self._client: FleetClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._replies: set[asyncio.Task[None]] = set()
        self._sending: dict[str, asyncio.Lock] = {}
        self._max: dict[str, int] = {}  # each device's `max` from its last request, for pushes
        self._made: dict[str, tuple[tuple[str, int, bytes | None], list[bytes]]] = {}
        self._dirty: dict[str, dict[str, Any]] = {}
        self._unknown: dict[str, int] = {}
        self._logs: list[tuple[float, str, str, str]] = []
        self._presence = f"{self.home}/config/server/{options.server_id}"

    async def __aenter__(self) -> ConfigServer:
        self.registry.scan()
        self._note_errors(self.registry.checked.keys())
        log.info("%d devices in service, %d refused", len(self.registry.served),
                 sum(1 for c in self.registry.checked.values() if not c.ok))
        try:
            client = await self._connect()  # BrokerError: a server that cannot reach its broker says so
        except BaseException:
            self.state.close()
            raise
        # Each runs until __aexit__ cancels it.
        self._tasks = [
            asyncio.create_task(self._link(client), name=f"config-server-link-{self.options.server_id}"),
            asyncio.create_task(self._watch(), name=f"config-server-watch-{self.options.server_id}"),
            asyncio.create_task(self._flush_loop(), name=f"config-server-flush-{self.options.server_id}"),
            asyncio.create_task(self._lease_loop(), name=f"config-server-lease-{self.options.server_id}"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        log.info("stopping %s: %s", self.options.server_id, self.counters)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._replies:
            await asyncio.wait(self._replies, timeout=5)
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, BrokerError):
                await client.publish(self._presence, "offline", qos=1, retain=True)
            await client.__aexit__(None, None, None)
        self._flush()
        with contextlib.suppress(Exception):  # a state file gone with its folder: nothing left to release
            self.state.release_lease(LEASE, self.options.server_id)
        self.state.close()

    # The link to the broker

    async def _connect(self) -> FleetClient:
        # A boot storm sends thousands of QoS 1 pieces: a wide in-flight window keeps them from queueing
        # behind 20 unacknowledged ones (paho's default), and their number is no cause for warnings.
        client = FleetClient(self.settings, f"fleet-config-{self.options.server_id}",
                             will=Will(self._presence, "offline"), max_inflight=1000)
        await client.__aenter__()
        client.client.pending_calls_threshold = 1 << 20
        try:
            h = self.home
            shared = [f"{h}/config/request/+", f"{h}/config/ack/+", f"{h}/log/#"]
            for f in shared:
                await client.subscribe(f"$share/{SHARE_GROUP}/{f}" if client.is_v5 else f, qos=1)
            for f in (f"{h}/+/status", f"{h}/+/info"):
                await client.subscribe(f, qos=1)
            await client.publish(self._presence, "online", qos=1, retain=True)
        except aiomqtt.MqttError as e:
            await client.__aexit__(None, None, None)
            raise BrokerError(self.settings.public_url, str(e)) from None
        if not client.is_v5:
            log.warning("broker speaks MQTT 3.1.1 only: no shared subscription, run a single server process")
        self._client = client
        return client

    async def _link(self, client: FleetClient) -> None:
        """Reads messages; reconnects with backoff when the broker goes away."""
        backoff = 1.0
        while True:
            try:
                async for msg in client.messages:
                    self._dispatch(msg)
                raise aiomqtt.MqttError("message stream ended")
            except aiomqtt.MqttError as e:
                log.error("lost the broker %s: %s", self.settings.public_url, e)
            self._client = None
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
            while True:
                await asyncio.sleep(backoff)
                try:
                    client = await self._connect()
                    log.warning("reconnected to %s", self.settings.public_url)
                    backoff = 1.0
                    break
                except BrokerError as e:
                    log.error("%s", e)
                    backoff = min(backoff * 2, 30.0)

    def _dispatch(self, msg: aiomqtt.Message) -> None:
        topic = msg.topic.value
        payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else str(msg.payload or "").encode()
        parts = topic[len(self.home) + 1 :].split("/") if topic.startswith(self.home + "/") else []
        try:
            if len(parts) == 3 and parts[:2] == ["config", "request"]:
                self._on_request(topic, parts[2], bytes(payload))
            elif len(parts) == 3 and parts[:2] == ["config", "ack"]:
                self._on_ack(topic, parts[2], bytes(payload))
            elif len(parts) == 3 and parts[0] == "log":
                self._on_log(topic, parts[1], parts[2], bytes(payload))
            elif len(parts) == 2 and parts[1] == "status" and parts[0] not in topics.RESERVED_IDS:
                self._on_status(topic, parts[0], bytes(payload))
            elif len(parts) == 2 and parts[1] == "info" and parts[0] not in topics.RESERVED_IDS:
                self._on_info(topic, parts[0], bytes(payload))
            else:
                self._drop(topic, "not a topic the config server handles")
        except _Malformed as e:
            self._drop(topic, str(e))
        except Exception:
            # A fault of ours (or of the state file) on one message must not end the message loop.
            self.counters.dropped += 1
            log.exception("dropped a message on %s: failed to handle it", topic)

    def _drop(self, topic: str, reason: str) -> None:
        self.counters.dropped += 1
        log.warning("dropped a message on %s: %s", topic, reason)

    def _device(self, device: str) -> None:
        if (why := topics.check_device_id(device)) is not None:
            raise _Malformed(why)

    def _update(self, device: str, **cols: Any) -> None:
        self._dirty.setdefault(device, {}).update(cols)

    # Requests and replies

    def _on_request(self, topic: str, device: str, payload: bytes) -> None:
        self._device(device)
        self.counters.requests += 1
        req = _json_object(payload, MAX_REQUEST)
        v = req.get("v")
        if v is not None and not isinstance(v, str):
            raise _Malformed(f"v must be a version string or null, not {v!r}")
        max_bytes = req.get("max", DEFAULT_PIECE)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or not 0 < max_bytes <= MAX_PIECE:
            raise _Malformed(f"max must be a number of bytes from 1 to {MAX_PIECE}, not {max_bytes!r}")
        served = self.registry.served.get(device)
        now = time.time()
        if served is None:
            checked = self.registry.checked.get(device)
            if checked is not None:
                log.error("%s asked for its config, but %s has never been valid; not answered", device, checked.path)
            else:
                self.counters.unknown += 1
                self._unknown[device] = self._unknown.get(device, 0) + 1
                log.warning("unknown device %s asked for its config (no %s); not answered", device,
                            self.registry.folder / f"{device}.hjson")
            return
        cols: dict[str, Any] = {"last_seen": now, "holds": v}
        for key in ("platform", "fw"):
            if isinstance(req.get(key), str):
                cols[key] = req[key][:32]
        platform = served.config.platform
        # A virtual node (unix) may stand in for any board; a real board of another kind is worth a word.
        if platform and req.get("platform") not in (None, "unix", platform):
            log.warning("%s is a %s, but its file says platform %s", device, req["platform"], platform)
        self._update(device, **cols)
        self._max[device] = max_bytes
        self._spawn_reply(device, served, v, max_bytes, pushed=False)

    def _spawn_reply(self, device: str, served: Served, holds: str | None, max_bytes: int, pushed: bool) -> None:
        # One task per reply, so a slow PUBACK never holds up the message loop; ends when its pieces are out.
        task = asyncio.create_task(self._reply(device, served, holds, max_bytes, pushed), name=f"config-reply-{device}")
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _reply(self, device: str, served: Served, holds: str | None, max_bytes: int, pushed: bool) -> None:
        lock = self._sending.setdefault(device, asyncio.Lock())
        async with lock:  # two replies to one device never interleave their pieces
            client = self._client
            if client is None:
                log.warning("%s: no broker link, reply dropped (the node will ask again)", device)
                return
            v = served.v
            topic = topics.config_reply(self.home, device)
            try:
                if holds == v and not pushed:
                    await client.publish(topic, unchanged(v), qos=1)
                    self.counters.unchanged += 1
                    return
                payloads = self._pieces(device, served, max_bytes)
                # One after the other: in order, and with a thousand devices served at once the in-flight
                # window stays full anyway (measured: cheaper than gathering the publishes).
                for payload in payloads:
                    await client.publish(topic, payload, qos=1)
            except aiomqtt.MqttError as e:
                log.error("%s: sending version %s failed: %s (the node will ask again)", device, v, e)
                return
            self.counters.pieces += len(payloads)
            if pushed:
                self.counters.pushes += 1
            else:
                self.counters.replies += 1
            self._update(device, sent=v, sent_at=time.time())
            log.info("%s: %s version %s in %d pieces", device, "pushed" if pushed else "sent", v, len(payloads))

    def _pieces(self, device: str, served: Served, max_bytes: int) -> list[bytes]:
        """The payloads of a reply, made once per version and piece size (a boot storm asks for the same)."""
        key = (served.v, max_bytes, served.key)
        cached = self._made.get(device)
        if cached is None or cached[0] != key:
            sig = signature(served.key, device, served.v, served.assembled) if served.key else None
            cached = self._made[device] = (key, pieces(served.assembled, served.v, max_bytes, sig))
        return cached[1]

    # Acks, status, info, logs

    def _on_ack(self, topic: str, device: str, payload: bytes) -> None:
        self._device(device)
        ack = _json_object(payload, MAX_REQUEST * 16)
        v, state = ack.get("v"), ack.get("state")
        if parse_version(v) is None:
            raise _Malformed(f"v must be a version like 7-1a2b3c4d, not {v!r}")
        if state not in ACK_STATES:
            raise _Malformed(f"state must be one of {', '.join(ACK_STATES)}, not {state!r}")
        served = self.registry.served.get(device)
        if not (served is not None and served.v == v) and not self.state.known_version(device, v):
            raise _Malformed(f"ack for version {v}, which was never given to {device}")
        self.counters.acks += 1
        detail = ack_detail(ack)
        cols: dict[str, Any] = {"acked": v, "ack_state": state, "ack_detail": detail, "ack_at": time.time()}
        if state == "applied":
            cols["holds"] = v
        self._update(device, **cols)
        if state == "refused":
            log.error("%s refused version %s: %s", device, v, detail)
        elif detail:
            log.warning("%s %s version %s; failed: %s", device, state, v, detail)
        else:
            log.info("%s %s version %s", device, state, v)

    def _on_status(self, topic: str, device: str, payload: bytes) -> None:
        self._device(device)
        text = payload.decode("utf-8", "replace")
        now = time.time()
        if text == "online":
            self.online.add(device)
            self._update(device, status="online", last_online=now, last_seen=now)
        elif text == "offline":
            self.online.discard(device)
            self._update(device, status="offline", last_offline=now)
        elif text:  # an empty payload is a retained status being cleared
            raise _Malformed(f"status must be online or offline, not {text[:40]!r}")

    def _on_info(self, topic: str, device: str, payload: bytes) -> None:
        self._device(device)
        if not payload:
            return
        info = _json_object(payload, MAX_REQUEST * 16)
        cols: dict[str, Any] = {"info": json.dumps(info, separators=(",", ":")), "last_seen": time.time()}
        for src, col in (("fw", "fw"), ("platform", "platform"), ("config", "holds")):
            if isinstance(info.get(src), str):
                cols[col] = info[src][:32]
        self._update(device, **cols)

    def _on_log(self, topic: str, level: str, device: str, payload: bytes) -> None:
        self._device(device)
        if level not in topics.LOG_LEVELS:
            raise _Malformed(f"log level must be one of {', '.join(topics.LOG_LEVELS)}")
        line = payload[:MAX_LOG_LINE].decode("utf-8", "replace").rstrip("\n")
        self.counters.logs += 1
        self._logs.append((time.time(), device, level, line))

    # Background work

    async def _watch(self) -> None:
        """Re-reads changed device files; the lease holder pushes new versions to online devices."""
        while True:
            await asyncio.sleep(self.options.poll)
            try:
                changes = self.registry.scan()
                if changes:
                    self._on_changes(changes)
            except Exception:
                log.exception("scanning %s failed; trying again", self.registry.folder)

    def _on_changes(self, changes: list[Change]) -> None:
        self._note_errors(c.device for c in changes)
        for change in changes:
            if change.kind == "updated" and self.pusher and change.device in self.online and change.served:
                max_bytes = self._max.get(change.device, DEFAULT_PIECE)
                self._spawn_reply(change.device, change.served, None, max_bytes, pushed=True)

    def _note_errors(self, devices: Any) -> None:
        for device in devices:
            checked = self.registry.checked.get(device)
            self._update(device, error="\n".join(map(str, checked.issues)) if checked and checked.issues else None)

    async def _flush_loop(self) -> None:
        """Writes what the message loop gathered to SQLite in one transaction, and prunes old logs hourly."""
        pruned = 0.0
        while True:
            await asyncio.sleep(self.options.flush_every)
            self._flush()
            if time.monotonic() - pruned > 3600:
                pruned = time.monotonic()
                try:
                    dropped = self.state.prune_logs(self.options.log_max_age, self.options.log_max_bytes)
                except Exception as e:
                    log.error("state %s: pruning logs failed: %s", self.options.state, e)
                    continue
                if dropped:
                    log.info("pruned %d old log lines", dropped)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        unknown, self._unknown = self._unknown, {}
        lines, self._logs = self._logs, []
        try:
            self.state.update_devices(dirty)
            self.state.count_unknown(unknown, time.time())
            self.state.add_logs(lines)
        except Exception as e:
            # The state file is busy or gone: keep the data for the next try rather than lose it.
            log.error("state %s: %s; will retry", self.options.state, e)
            for device, cols in dirty.items():
                self._dirty[device] = {**cols, **self._dirty.get(device, {})}
            for device, n in unknown.items():
                self._unknown[device] = self._unknown.get(device, 0) + n
            self._logs[:0] = lines

    async def _lease_loop(self) -> None:
        """Takes or renews the pusher lease; only its holder pushes configs on file changes."""
        while True:
            try:
                held = self.state.hold_lease(LEASE, self.options.server_id, self.options.lease_ttl)
            except Exception as e:
                log.error("state %s: %s", self.options.state, e)
                held = False
            if held != self.pusher:
                log.info("%s the pusher", "now" if held else "no longer")
                self.pusher = held
            await asyncio.sleep(self.options.lease_ttl / 3)


class _Malformed(Exception):
    """A payload from outside that is not what docs/PROTOCOL.md says; logged with its topic, then dropped."""


def _json_object(payload: bytes, limit: int) -> dict[str, Any]:
    if len(payload) > limit:
        raise _Malformed(f"{len(payload)} bytes is too large (at most {limit})")
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise _Malformed(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise _Malformed("expected a JSON object")
    return value
