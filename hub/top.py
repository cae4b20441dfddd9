"""`fleet hub top`: live traffic per topic group, like `top`, against any broker.

It meters what it receives itself (no hub needed); when a hub publishes `<home>/<hub>/stats` and
`<home>/<hub>/jobs`, its jobs' state, CPU, memory and loop time are shown below the topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fleet import topics
from fleet.mqtt import BrokerSettings, FleetClient
from hub.jobs.stats import TrafficMeter


@dataclass
class TopView:
    """What `fleet hub top` shows: the meter's rates and the hubs' own reports."""

    settings: BrokerSettings
    meter: TrafficMeter
    rows: int = 20
    hubs: dict[str, dict[str, Any]] = field(default_factory=dict)  # hub → its last stats
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # hub → its last jobs report

    def feed(self, topic: str, payload: bytes, metered: bool = True) -> None:
        """Take one message; `metered` False for retained replays and topics outside the filter."""
        if metered:
            self.meter.add(topic, len(payload))
        parts = topic.split("/")
        if len(parts) == 3 and parts[0] == self.settings.home and parts[2] in ("stats", "jobs"):
            try:
                data = json.loads(payload)
            except ValueError:
                return  # not a hub's report: it was metered all the same
            if isinstance(data, dict):
                (self.hubs if parts[2] == "stats" else self.jobs)[parts[1]] = data

    def render(self) -> RenderableType:
        rates = self.meter.rates()
        total_m = sum(m for m, _ in rates.values())
        total_k = sum(k for _, k in rates.values())
        head = Text.assemble(
            ("fleet hub top", "bold"), f"  {self.settings.public_url}  home {self.settings.home}  ",
            f"window {self.meter.window}s  depth {self.meter.depth}  ",
            (f"{total_m:,.1f} msg/s  {total_k:,.1f} kB/s", "bold cyan"),
            f"  ({self.meter.total_msgs:,} msgs seen)")
        table = Table(expand=False, box=None, header_style="bold")
        table.add_column("topic")
        table.add_column("msg/s", justify="right")
        table.add_column("kB/s", justify="right")
        for key, (msgs, kbytes) in list(rates.items())[: self.rows]:
            table.add_row(key, f"{msgs:,.1f}", f"{kbytes:,.2f}")
        if len(rates) > self.rows:
            table.add_row(f"… {len(rates) - self.rows} more", "", "")
        parts: list[RenderableType] = [head, table]
        for hub in sorted(set(self.hubs) | set(self.jobs)):
            parts.append(self._hub_table(hub))
        return Group(*parts)

    def _hub_table(self, hub: str) -> Table:
        stats = self.hubs.get(hub, {})
        states = self.jobs.get(hub, {})
        process = stats.get("process", {})
        title = f"hub {hub}"
        if stats:
            title += (f"  lag {stats.get('lag', 0)} ms  cpu {process.get('cpu', 0)}%"
                      f"  rss {process.get('rss', 0) / 1e6:.1f} MB")
        table = Table(title=title, title_justify="left", box=None, header_style="bold")
        for col in ("job", "state", "restarts", "loop ms/s", "cpu %", "rss MB", "error"):
            table.add_column(col, justify="left" if col in ("job", "state", "error") else "right")
        jobs_figs = stats.get("jobs", {})
        loop = stats.get("loop", {})
        for name in sorted(set(states) | set(jobs_figs) | set(loop)):
            st = states.get(name, {}) if isinstance(states.get(name), dict) else {}
            figs = jobs_figs.get(name, {}) if isinstance(jobs_figs.get(name), dict) else {}
            rss = figs.get("rss")
            table.add_row(name, str(st.get("state", "")), str(st.get("restarts", "")),
                          _num(loop.get(name)), _num(figs.get("cpu")),
                          f"{rss / 1e6:.1f}" if isinstance(rss, int | float) else "", str(st.get("error") or ""))
        return table


def _num(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, int | float) else ""


async def watch(settings: BrokerSettings, view: TopView, topic_filter: str, seconds: float | None,
                console: Console, refresh: float = 1.0) -> None:
    """Meter `topic_filter` and draw `view`: live, refreshed every `refresh` s; or, with `seconds`, one
    frame printed after that long (for scripts and logs)."""
    async with FleetClient(settings, f"fleet-top-{int(time.time() * 1000) % 10**8}") as client:
        await client.subscribe(topic_filter, 0)
        stats_filter = f"{settings.home}/+/stats"
        if not topics.matches(topic_filter, f"{settings.home}/x/stats"):
            await client.subscribe(stats_filter, 0)
            await client.subscribe(f"{settings.home}/+/jobs", 0)

        async def read() -> None:
            async for msg in client.messages:
                topic = msg.topic.value
                view.feed(topic, bytes(msg.payload or b""),  # type: ignore[arg-type]
                          not msg.retain and topics.matches(topic_filter, topic))

        # Started here, ends when the watch ends (cancelled below): reads and meters the messages.
        reader = asyncio.create_task(read(), name="top-reader")
        try:
            if seconds is not None:
                await asyncio.sleep(seconds)
                console.print(view.render())
                return
            with Live(view.render(), console=console, refresh_per_second=4, screen=False) as live:
                while not reader.done():
                    await asyncio.sleep(refresh)
                    live.update(view.render())
            await reader  # the link ended: its error explains why
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
