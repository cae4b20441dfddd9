"""What the hub's tests share: a watcher on a real broker, and running a HubService from hjson text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from fleet.mqtt import BrokerSettings, FleetClient
from hub import config
from hub.service import HubService


@dataclass
class Seen:
    topic: str
    payload: str
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Watch:
    """Every message on `filters`, as it arrives: `async with Watch(settings, "a/#") as w: await w.wait(…)`."""

    settings: BrokerSettings
    filters: tuple[str, ...]
    seen: list[Seen] = field(default_factory=list)
    client: FleetClient | None = None
    _task: asyncio.Task[None] | None = None

    def __init__(self, settings: BrokerSettings, *filters: str) -> None:
        self.settings, self.filters, self.seen = settings, filters, []

    async def __aenter__(self) -> Watch:
        self.client = FleetClient(self.settings)
        await self.client.__aenter__()
        for f in self.filters:
            await self.client.subscribe(f, 1)

        async def read() -> None:
            assert self.client is not None
            async for msg in self.client.messages:
                payload = bytes(msg.payload or b"").decode(errors="replace")  # type: ignore[arg-type]
                self.seen.append(Seen(msg.topic.value, payload, msg.retain, time.monotonic()))

        # Started here, cancelled in __aexit__: collects the messages.
        self._task = asyncio.create_task(read(), name="test-watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):  # its broker may be gone
                await self._task
        if self.client:
            await self.client.__aexit__(None, None, None)

    def on(self, topic: str) -> list[Seen]:
        return [s for s in self.seen if s.topic == topic]

    async def wait(self, test: Callable[[Seen], bool], timeout: float = 10.0, what: str = "") -> Seen:
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for s in self.seen[checked:]:
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    if test(s):
                        return s
            checked = len(self.seen)
            if time.monotonic() > deadline:
                tail = "\n".join(f"  {s.topic} {s.payload[:160]}" for s in self.seen[-15:])
                raise AssertionError(f"timed out waiting for {what or 'a message'}; last seen:\n{tail}")
            await asyncio.sleep(0.02)

    async def publish(self, topic: str, payload: str, qos: int = 1, retain: bool = False) -> None:
        assert self.client is not None
        await self.client.publish(topic, payload, qos, retain)


@contextlib.asynccontextmanager
async def running_hub(text: str, settings: BrokerSettings, workdir: Path, only: list[str] | None = None,
                      tweak: Callable[[config.HubConfig], None] | None = None) -> AsyncIterator[HubService]:
    """A HubService from hub.hjson `text`, connected, stopped at the end."""
    cfg = config.loads(text, "hub.hjson", only)
    cfg.workdir = workdir
    if tweak:
        tweak(cfg)
    async with HubService(cfg, settings) as hub:
        await hub.wait_connected(15)
        yield hub
