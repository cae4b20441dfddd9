"""What a hub job is, and what it sees of the hub. Every job (obd, camera, upload, power, rules, stats)
is a subclass of `Job`, run by the hub service as a named task with its own error boundary.

A job talks to the rest of the world only through MQTT (`Hub.publish`, `Hub.subscribe`), so rules,
Home Assistant and other jobs can watch and drive it. It announces the actions and events the rules
may name (`ACTIONS`, `EVENTS`); the rules are checked against them when `hub.hjson` loads.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import aiomqtt

from fleet.errors import ConfigIssue
from fleet.hjsonpos import Document


@dataclass(frozen=True)
class Action:
    """A rule step a job offers: publish `payload` on the hub topic `topic`; the step is done when a
    message on `reply` (a hub topic) arrives whose payload equals `reply_payload` (any payload when
    None), or at once when `reply` is None."""

    topic: str
    payload: str
    reply: str | None = None
    reply_payload: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class Event:
    """Something a job announces: a message on the hub topic `topic`, with `payload` when given."""

    topic: str
    payload: str | None = None


class Hub(Protocol):
    """The hub as a job sees it."""

    id: str
    home: str
    workdir: Path  # the hub's data folder (segments, upload queue, state)

    def topic(self, *parts: str) -> str:
        """`<home>/<hub-id>/<parts…>`."""

    async def publish(self, topic: str, payload: str | bytes | None = None, qos: int = 0, retain: bool = False, *,
                      response_topic: str | None = None, correlation: bytes | None = None) -> None:
        """Publish on the hub's connection (MQTT 5 response topic and correlation data where it speaks 5);
        waits up to 10 s for the link, else BrokerError."""

    def subscribe(self, topic_filter: str | Sequence[str], qos: int = 1, *,
                  bulk: bool = False) -> AbstractAsyncContextManager[AsyncIterator[aiomqtt.Message]]:
        """`async with hub.subscribe(f) as messages: async for msg in messages: …` — the messages on `f`
        (one filter or several); retained `/set` messages are already dropped. The subscription outlives
        reconnections: the hub subscribes again after every reconnect. `bulk` for thousands of messages
        a second (the stats job): they come over a second, MQTT 3.1.1 connection (no MQTT 5 properties,
        no order relative to the other subscriptions)."""

    async def announce(self, platform: str, obj: str, entity: dict[str, Any]) -> None:
        """Announce a Home Assistant entity of this hub (PROTOCOL.md section 5): `entity` holds `name`,
        `state_topic`, … ; the hub adds `unique_id`, availability and the device block, publishes it
        retained and sends it again whenever Home Assistant comes online."""

    def job_names(self) -> list[str]:
        """The jobs configured to run, in order."""

    def busy_time(self, job: str) -> float:
        """Seconds of event-loop time the job's tasks have used since it started (for the stats job)."""

    def job(self, name: str) -> Job | None:
        """Another running job, for read-only queries (e.g. the upload queue's size)."""

    def logger(self, job: str) -> logging.Logger:
        """A logger whose lines also go to `<home>/log/<level>/<hub-id>` as `<job>: <message>`."""


class Job:
    """Base class of the hub's jobs. Subclasses set NAME, ACTIONS, EVENTS and implement `run`."""

    NAME: ClassVar[str] = ""
    ACTIONS: ClassVar[dict[str, Action]] = {}
    EVENTS: ClassVar[dict[str, Event]] = {}

    def __init__(self, hub: Hub, config: dict[str, Any]) -> None:
        self.hub = hub
        self.config = config
        self.log = hub.logger(self.NAME)

    @classmethod
    def check(cls, doc: Document, path: tuple[str | int, ...]) -> list[ConfigIssue]:
        """Problems in this job's section of `hub.hjson` (at `path` in `doc`), with positions."""
        return []

    async def run(self) -> None:
        """The job's life. Started by the hub service; ends when cancelled at shutdown. An exception
        ends this run: the service logs it, reports it on `<home>/<hub>/jobs` and restarts the job
        with backoff."""
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        """Figures for the stats job (e.g. `cpu` %, `rss` bytes of a job's own process)."""
        return {}
