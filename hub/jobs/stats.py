"""The stats job: pyGecko's per-topic rates, for MQTT.

`TrafficMeter` counts messages and bytes per topic group (a topic cut to `depth` levels, or the first
of `groups` it matches) in one-second buckets over a sliding window; `fleet hub top` uses the same
meter against any broker. The job publishes, every `interval` seconds, on `<home>/<hub>/stats`:
the rates, each job's own figures (`Job.stats()`: CPU and memory of its thread or process), the
event-loop time each job's tasks used (ms per second) and the loop's worst lag.

    stats: { filter: "#", window: 10, depth: 3, interval: 5, groups: ["{home}/+/obd/#"] }
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any, ClassVar

import aiomqtt

from fleet import topics
from fleet.errors import BrokerError, ConfigIssue
from fleet.hjsonpos import Document, KeyPath
from hub.job import Job

KEYS = ("filter", "window", "depth", "interval", "groups")
LAG_TICK = 0.05  # seconds between the lag probe's wake-ups


class TrafficMeter:
    """Messages and bytes per topic group over the last `window` seconds."""

    def __init__(self, window: int = 10, depth: int = 3, groups: tuple[str, ...] = ()) -> None:
        self.window = max(2, int(window))
        self.depth = depth
        self.groups = groups
        self.started = time.monotonic()
        self.total_msgs = 0
        self.total_bytes = 0
        self._keys: dict[str, str] = {}  # topic → group, cached: grouping is the costly part
        self._msgs: dict[str, list[int]] = {}  # group → counts per second slot (ring of `window`)
        self._bytes: dict[str, list[int]] = {}
        self._second = int(self.started)

    def group(self, topic: str) -> str:
        for pattern in self.groups:
            if topics.matches(pattern, topic):
                return pattern
        parts = topic.split("/")
        return "/".join(parts[: self.depth]) + "/#" if len(parts) > self.depth else topic

    def add(self, topic: str, size: int, now: float | None = None) -> None:
        second = int(time.monotonic() if now is None else now)
        if second != self._second:
            self._advance(second)
        key = self._keys.get(topic)
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            key = self._keys[topic] = self.group(topic)
            if key not in self._msgs:
                self._msgs[key] = [0] * self.window
                self._bytes[key] = [0] * self.window
        slot = second % self.window
        self._msgs[key][slot] += 1
        self._bytes[key][slot] += size
        self.total_msgs += 1
        self.total_bytes += size

    def _advance(self, second: int) -> None:
        """Empty the slots of the seconds that passed since the last message."""
        for s in range(max(self._second + 1, second - self.window + 1), second + 1):
            slot = s % self.window
            for counts in self._msgs.values():
                counts[slot] = 0
            for counts in self._bytes.values():
                counts[slot] = 0
        self._second = second

    def rates(self, now: float | None = None) -> dict[str, tuple[float, float]]:
        """group → (messages/s, kB/s) over the window, busiest first; idle groups left out."""
        now = time.monotonic() if now is None else now
        if int(now) != self._second:
            self._advance(int(now))
        # The slots cover the window's whole seconds up to now; early on, only the time since start.
        span = min(self.window - 1 + (now - int(now)), now - self.started)
        if span <= 0:
            return {}
        out = {key: (sum(counts) / span, sum(self._bytes[key]) / span / 1000)
               for key, counts in self._msgs.items() if any(counts)}
        return dict(sorted(out.items(), key=lambda kv: -kv[1][0]))


def _process_figures(last: list[float]) -> dict[str, float]:
    """CPU % of this process since the previous call (`last` holds [cpu seconds, wall]) and its RSS."""
    t = os.times()
    cpu, wall = t.user + t.system, time.monotonic()
    pct = 100.0 * (cpu - last[0]) / (wall - last[1]) if wall > last[1] else 0.0
    last[:] = [cpu, wall]
    rss = 0
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"cpu": round(pct, 1), "rss": rss}


class StatsJob(Job):
    NAME: ClassVar[str] = "stats"

    def __init__(self, hub: Any, config: dict[str, Any]) -> None:
        super().__init__(hub, config)
        c = config
        self.filter = str(c.get("filter", "#")).replace("{home}", hub.home).replace("{hub}", hub.id)
        self.interval = float(c.get("interval", 5))
        groups = tuple(str(g).replace("{home}", hub.home).replace("{hub}", hub.id) for g in c.get("groups", []))
        self.meter = TrafficMeter(int(c.get("window", 10)), int(c.get("depth", 3)), groups)
        self.lag_max = 0.0
        self.published = 0

    @classmethod
    def check(cls, doc: Document, path: KeyPath) -> list[ConfigIssue]:
        section = doc.data.get(path[0], {}) if isinstance(doc.data, dict) else {}
        if not isinstance(section, dict):
            return []
        issues = [doc.issue((*path, k), f"unknown key (stats takes {', '.join(KEYS)})")
                  for k in section if k not in KEYS]
        for key, low in (("window", 2), ("depth", 1), ("interval", 0.1)):
            value = section.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < low
                                      or (key != "interval" and not isinstance(value, int))):
                kind = "a number" if key == "interval" else "a whole number"
                issues.append(doc.issue((*path, key), f"expected {kind} ≥ {low}, found {value!r}"))
        if "filter" in section and not isinstance(section["filter"], str):
            issues.append(doc.issue((*path, "filter"), "expected a topic filter"))
        groups = section.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            issues.append(doc.issue((*path, "groups"), "expected a list of topic filters"))
        return issues

    async def run(self) -> None:
        # Both started here and cancelled when the job ends: the loop-lag probe and the publisher.
        probe = asyncio.create_task(self._probe_lag(), name="stats-lag")
        publisher = asyncio.create_task(self._publish_loop(), name="stats-publish")
        add = self.meter.add
        try:
            async with self.hub.subscribe(self.filter, qos=0, bulk=True) as messages:
                async for msg in messages:
                    if not msg.retain:  # a retained replay on subscribe is no traffic
                        add(msg.topic.value, len(msg.payload))  # type: ignore[arg-type]
        finally:
            probe.cancel()
            publisher.cancel()

    async def _probe_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(LAG_TICK)
            self.lag_max = max(self.lag_max, loop.time() - t0 - LAG_TICK)

    def snapshot(self, busy_then: dict[str, float], elapsed: float, process: list[float]) -> dict[str, Any]:
        rates = self.meter.rates()
        jobs: dict[str, Any] = {}
        loop: dict[str, float] = {}
        for name in ["hub", *self.hub.job_names()]:
            busy = self.hub.busy_time(name)
            loop[name] = round((busy - busy_then.get(name, busy)) / elapsed * 1000, 2)
            busy_then[name] = busy
            job = self.hub.job(name)
            figures = job.stats() if job is not None else {}
            if figures:
                jobs[name] = figures
        lag, self.lag_max = self.lag_max, 0.0
        return {
            "window": self.meter.window,
            "topics": {k: {"msgs": round(m, 2), "kbytes": round(b, 3)} for k, (m, b) in rates.items()},
            "jobs": jobs, "loop": loop, "lag": round(lag * 1000, 2),
            "process": _process_figures(process), "dropped": getattr(self.hub, "dropped", 0),
            "seen": self.meter.total_msgs,
        }

    async def _publish_loop(self) -> None:
        busy_then = {name: self.hub.busy_time(name) for name in ["hub", *self.hub.job_names()]}
        t = os.times()
        process = [t.user + t.system, time.monotonic()]
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            try:
                payload = self.snapshot(busy_then, now - last, process)
            except Exception as exc:  # a job's stats() must not stop the figures of the others
                self.log.warning("stats: %r", exc)
                continue
            finally:
                last = now
            try:
                await self.hub.publish(self.hub.topic("stats"), json.dumps(payload, separators=(",", ":")), qos=0)
                self.published += 1
            except (BrokerError, aiomqtt.MqttError) as exc:
                self.log.info("stats not published: %s", exc)
