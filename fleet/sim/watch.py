"""What `fleet sim` sees of its fleet: one MQTT client subscribed to `#`, like `mosquitto_sub -t '#'`.

It keeps each device's presence and `info`, the config acks, the last message of every topic (for the
scenario's expectations), and feeds `fleet hub top`'s view (message rates per topic group, the hub's
jobs), which the live view shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from fleet import topics
from fleet.mqtt import BrokerSettings, FleetClient
from hub.jobs.stats import TrafficMeter
from hub.top import TopView


@dataclass
class Device:
    """A device as the sim sees it from the traffic."""

    id: str
    status: str = "—"
    info: dict[str, Any] = field(default_factory=dict)
    ack: dict[str, Any] = field(default_factory=dict)  # the last config ack
    changes: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, status)

    @property
    def config(self) -> str | None:
        value = self.info.get("config")
        return value if isinstance(value, str) else None

    @property
    def configured(self) -> bool:
        """Online and running the config the server sent: its `info` names the version its last ack applied.

        Status (QoS 1) and info (QoS 0) may arrive in either order: in a boot storm the broker holds QoS 1
        messages back while this client's in-flight window is full, and sends QoS 0 ones at once."""
        return (self.status == "online" and self.config is not None
                and self.ack.get("state") == "applied" and self.ack.get("v") == self.config)


class Watch:
    """`async with Watch(settings, hub_id) as w:` the fleet's traffic; `await w.expect(condition, 10)`."""

    def __init__(self, settings: BrokerSettings, hub: str) -> None:
        self.settings = settings
        self.home = settings.home
        self.hub = hub
        self.devices: dict[str, Device] = {}
        self.last: dict[str, bytes] = {}
        self.top = TopView(settings, TrafficMeter(window=5, depth=3, groups=(
            f"{self.home}/log/#", f"{self.home}/config/#", f"{self.home}/+/config", f"{self.home}/_sim/#",
            f"{self.home}/+/status", f"{self.home}/+/info", f"{self.home}/{hub}/obd/#", "homeassistant/#")), rows=12)
        self.total = 0
        self.levels: dict[str, int] = {}  # log lines per level
        self.last_error = ""
        self.events: deque[tuple[float, str]] = deque(maxlen=200)
        self.started = time.monotonic()
        self.quiet = True  # status changes go to the events once the fleet has booted (set by the sim)
        self._changed = asyncio.Event()
        self._client: FleetClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        self._client = FleetClient(self.settings, f"fleet-sim-watch-{int(time.time() * 1000) % 10**8}")
        await self._client.__aenter__()
        await self._client.subscribe("#", 1)
        # Started here, cancelled in __aexit__: takes every message of the fleet.
        self._task = asyncio.create_task(self._read(), name="sim-watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
        if self._client:
            await self._client.__aexit__(None, None, None)

    def note(self, text: str) -> None:
        self.events.append((time.monotonic() - self.started, text))

    def device(self, device_id: str) -> Device:
        if device_id not in self.devices:
            self.devices[device_id] = Device(device_id)
        return self.devices[device_id]

    async def _read(self) -> None:
        assert self._client is not None
        async for msg in self._client.messages:
            payload = bytes(msg.payload or b"")  # type: ignore[arg-type]
            self.feed(msg.topic.value, payload, msg.retain)

    def feed(self, topic: str, payload: bytes, retained: bool = False) -> None:
        self.total += 1
        self.last[topic] = payload
        self.top.feed(topic, payload, not retained)
        parts = topic.split("/")
        if len(parts) == 3 and parts[0] == self.home and parts[1] != self.hub and parts[2] in ("stats", "jobs"):
            # a node's component may be called `stats` too: only the hub's reports are the hub's
            self.top.hubs.pop(parts[1], None)
            self.top.jobs.pop(parts[1], None)
        if parts[0] == self.home and len(parts) == 4 and parts[1] == "log":
            self.levels[parts[2]] = self.levels.get(parts[2], 0) + 1
            if parts[2] in ("error", "critical"):
                self.last_error = f"{parts[3]}: {payload.decode(errors='replace')[:200]}"
        if parts[0] == self.home and len(parts) == 3:
            if parts[1] == "config" or topics.check_device_id(parts[1]):
                pass
            elif parts[2] == "status":
                self._status(parts[1], payload.decode(errors="replace"))
            elif parts[2] == "info":
                with contextlib.suppress(ValueError):
                    info = json.loads(payload)
                    if isinstance(info, dict):
                        self.device(parts[1]).info = info
        if parts[0] == self.home and len(parts) == 4 and parts[1:3] == ["config", "ack"]:
            with contextlib.suppress(ValueError):
                ack = json.loads(payload)
                if isinstance(ack, dict):
                    self.device(parts[3]).ack = ack
                    if ack.get("state") != "applied" or ack.get("failed"):
                        self.note(f"{parts[3]}: config {ack.get('v')} {ack.get('state')} "
                                  f"{ack.get('errors') or ack.get('failed') or ''}".rstrip())
        self._changed.set()

    def _status(self, device_id: str, status: str) -> None:
        d = self.device(device_id)
        if status != d.status:
            d.changes.append((time.monotonic(), status))
            if not self.quiet:
                self.note(f"{device_id} {status}")
        d.status = status

    async def wait_until(self, test: Any, timeout: float) -> bool:
        """Whether `test()` holds now or turns true (on a message) within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            if test():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def holds(self, condition: Any) -> bool:
        """Whether the last message of a topic `condition` (hub.jobs.rules.Condition) matches it."""
        if "+" not in condition.topic and "#" not in condition.topic:
            payload = self.last.get(condition.topic)
            candidates = [] if payload is None else [(condition.topic, payload)]
        else:
            candidates = list(self.last.items())
        for topic, payload in candidates:
            with contextlib.suppress(ValueError):
                if condition.test(topic, payload):
                    return True
        return False

    def rate(self) -> float:
        return sum(m for m, _ in self.top.meter.rates().values())
