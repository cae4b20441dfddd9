"""A minimal `hub.job.Hub` over a real FleetClient and a real broker.

It stands in for hub/service.py only to test one job alone (the OBD job's tests started before the
service existed); everything a job does still goes over real MQTT. It has no job supervision, no
restarts, no log topics and no reconnects: tests that need those use the real service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from fleet import topics
from fleet.mqtt import BrokerSettings, FleetClient, Will
from hub.job import Job


@dataclass
class StubHub:
    settings: BrokerSettings
    id: str
    workdir: Path
    client: FleetClient | None = None
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    _queues: list[tuple[tuple[str, ...], asyncio.Queue[aiomqtt.Message]]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def home(self) -> str:
        return self.settings.home

    def topic(self, *parts: str) -> str:
        return "/".join((self.home, self.id, *parts))

    async def __aenter__(self) -> StubHub:
        self.client = FleetClient(self.settings, f"{self.id}-stub",
                                  will=Will(topics.status(self.home, self.id)))
        await self.client.__aenter__()
        await self.client.publish(topics.status(self.home, self.id), "online", qos=1, retain=True)
        # Started here, ends in __aexit__: hands every message to the subscriptions it matches.
        self._reader = asyncio.create_task(self._read(), name="hubstub-reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self.client is not None:
            await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        assert self.client is not None
        async for msg in self.client.messages:
            for filters, queue in self._queues:
                if any(topics.matches(f, msg.topic.value) for f in filters):
                    if msg.retain and msg.topic.value.endswith("/set"):
                        continue
                    queue.put_nowait(msg)

    async def publish(self, topic: str, payload: str | bytes | None = None, qos: int = 0,
                      retain: bool = False, *, correlation: bytes | None = None) -> None:
        assert self.client is not None
        await self.client.publish(topic, payload, qos, retain, correlation=correlation)

    @contextlib.asynccontextmanager
    async def subscribe(self, topic_filter: str | Sequence[str], qos: int = 1) -> AsyncIterator[
            AsyncIterator[aiomqtt.Message]]:
        assert self.client is not None
        filters = (topic_filter,) if isinstance(topic_filter, str) else tuple(topic_filter)
        queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        entry = (filters, queue)
        self._queues.append(entry)
        for f in filters:
            await self.client.subscribe(f, qos)

        async def messages() -> AsyncIterator[aiomqtt.Message]:
            while True:
                yield await queue.get()

        try:
            yield messages()
        finally:
            self._queues.remove(entry)

    async def announce(self, platform: str, obj: str, entity: dict[str, Any]) -> None:
        entity = {**entity, "unique_id": f"{self.id}_{obj}",
                  "availability_topic": topics.status(self.home, self.id),
                  "payload_available": "online", "payload_not_available": "offline",
                  "device": {"identifiers": [f"smartfleet_{self.id}"], "name": self.id,
                             "model": "SmartFleet hub", "manufacturer": "SmartFleet"}}
        self.entities[obj] = entity
        await self.publish(topics.discovery(platform, self.id, obj), json.dumps(entity), qos=1, retain=True)

    def job_names(self) -> list[str]:
        return []

    def busy_time(self, job: str) -> float:
        return 0.0

    def job(self, name: str) -> Job | None:
        return None

    def logger(self, job: str) -> logging.Logger:
        return logging.getLogger(f"hub.{job}")


@contextlib.asynccontextmanager
async def running_job(settings: BrokerSettings, hub_id: str, workdir: Path, job_class: type[Job],
                      config: dict[str, Any]) -> AsyncIterator[Job]:
    """`job_class(config)` running on a StubHub, cancelled at the end of the block (as the service stops
    a job at shutdown)."""
    async with StubHub(settings, hub_id, workdir) as hub:
        job = job_class(hub, config)
        # Started here, cancelled when the block ends.
        task = asyncio.create_task(job.run(), name=f"stub-{job_class.NAME}-job")
        try:
            yield job
        finally:
            task.cancel()
            # A job must end soon after it is cancelled (the service stops jobs so at shutdown); one that
            # swallows the cancellation (Python 3.11's wait_for can) fails here rather than hanging.
            done, _ = await asyncio.wait({task}, timeout=15)
            assert done, f"the {job_class.NAME} job did not stop within 15 s of being cancelled"
            with contextlib.suppress(asyncio.CancelledError):
                await task
