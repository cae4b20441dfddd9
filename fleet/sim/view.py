"""The live terminal view of `fleet sim` and its final summary (rich)."""

from __future__ import annotations

import io
import time

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from fleet.sim.run import HUB_ID, Sim

STYLE = {"online": "green", "offline": "red", "ok": "green", "done": "dim", "failed": "bold red",
         "running": "yellow", "waiting": "dim"}
MARK = {"ok": "✓", "done": "·", "failed": "✗", "running": "…", "waiting": " "}


def devices_table(sim: Sim, rows: int = 14) -> Table:
    """The hub and the device files' nodes; generated nodes only while they are not configured; those not
    configured first, at most `rows`."""
    w = sim.watch
    listed = [i for i in (HUB_ID, *sim.nodes) if not i.startswith("node-") or not w.device(i).configured]
    listed.sort(key=lambda i: i != HUB_ID and w.device(i).configured)  # stable: the hub, then problems
    shown = listed[:rows]
    now = time.monotonic()
    configured = sum(1 for n in sim.nodes if w.device(n).configured)
    online = sum(1 for n in sim.nodes if w.device(n).status == "online")
    table = Table(title=f"devices: {len(sim.nodes)} nodes, {online} online, {configured} configured",
                  title_justify="left", box=None, header_style="bold")
    for col in ("device", "status", "config", "heap free", "for", "boots", "note"):
        table.add_column(col, justify="right" if col in ("heap free", "for", "boots") else "left")
    for device_id in shown:
        d = w.device(device_id)
        node = sim.nodes.get(device_id)
        heap = d.info.get("heap_free")
        since = now - d.changes[-1][0] if d.changes else None  # in this status, as seen from here
        note = ""
        jobs = w.top.jobs.get(device_id, {}) if device_id == HUB_ID else {}
        if jobs:
            states = [j.get("state") for j in jobs.values() if isinstance(j, dict)]
            note = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)) + " jobs"
        if d.info.get("failed"):
            note = "failed: " + ", ".join(d.info["failed"])
        elif node is not None and node.vnode is None:
            note = "powered off"
        elif d.ack.get("state") and d.ack.get("state") != "applied":
            note = f"config {d.ack.get('state')}"
        table.add_row(device_id, Text(d.status, STYLE.get(d.status, "")), d.config or "—",
                      f"{heap:,}" if isinstance(heap, int) else "—",
                      f"{since:.0f}s" if since is not None else "—",
                      str(node.boots) if node else "", note)
    if len(listed) > len(shown):
        table.add_row(f"… {len(listed) - len(shown)} more", "", "", "", "", "", "")
    return table


def steps_table(sim: Sim, last: int | None = 8) -> Table:
    table = Table(title=f"scenario: {sim.scenario.name}", title_justify="left", box=None, header_style="bold")
    for col in ("", "at", "step", "took", "detail"):
        table.add_column(col, justify="right" if col in ("at", "took") else "left")
    results = sim.results
    if last is not None:
        current = next((i for i, r in enumerate(results) if r.state in ("running", "waiting")), len(results))
        start = max(0, min(current - last // 2, len(results) - last))
        results = results[start:start + last]
    for r in results:
        table.add_row(Text(MARK[r.state], STYLE[r.state]), f"{r.started:.1f}" if r.started is not None else "",
                      Text(r.step.describe(), STYLE[r.state] if r.state != "done" else ""),
                      f"{r.took:.1f}s" if r.took is not None and r.step.kind == "expect" else "",
                      r.detail)
    return table


def render(sim: Sim) -> RenderableType:
    w = sim.watch
    head = Text.assemble(("fleet sim", "bold"), f"  {sim.settings.public_url}  home {sim.settings.home}  ",
                         f"{sim.elapsed():.0f} s  ", (f"{w.rate():,.0f} msg/s", "bold cyan"),
                         f"  ({w.total:,} messages)  folder {sim.folder}")
    events = Text("\n".join(f"{t:7.1f}  {text}" for t, text in list(w.events)[-6:]), style="dim")
    return Group(head, devices_table(sim), steps_table(sim), w.top.render(), events)


def render_text(sim: Sim, width: int = 160) -> str:
    """The view as plain text (for tests and logs)."""
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(render(sim))
    return console.file.getvalue()  # type: ignore[attr-defined]


def summary(sim: Sim, kept: bool = True) -> RenderableType:
    w = sim.watch
    held = sum(1 for r in sim.results if r.state == "ok")
    expected = sum(1 for r in sim.results if r.step.kind == "expect")
    verdict = ("interrupted" if sim.interrupted else "passed" if sim.ok else "FAILED")
    style = "bold green" if sim.ok else "bold red"
    lines = [Text.assemble(("fleet sim: ", "bold"), (verdict, style),
                           f" — {held}/{expected} expectations held, {sim.elapsed():.0f} s, "
                           f"{w.total:,} messages, scenario {sim.scenario.path}")]
    configured = sim.configured_at_end
    boot = f"; all configured {sim.boot_time:.1f} s after the start" if sim.boot_time is not None else ""
    lines.append(Text(f"nodes: {len(sim.nodes)}, {configured} configured at the end{boot}"))
    errors = w.levels.get("error", 0) + w.levels.get("critical", 0)
    lines.append(Text("log lines from the fleet: " + ", ".join(f"{k} {v}" for k, v in sorted(w.levels.items()))
                      + (f" (last error: {w.last_error})" if errors and w.last_error else "")))
    for problem in sim.problems:
        lines.append(Text(f"problem: {problem}", "red"))
    lines.append(Text(f"files: {sim.folder} (logs/, nodes/<id>.log)" if kept else
                      "files: a temporary folder, removed (--dir DIR keeps them)"))
    return Group(steps_table(sim, last=None), *lines)


class Ticker:
    """Without a terminal: the scenario's progress as plain lines, one per event."""

    def __init__(self, sim: Sim, console: Console) -> None:
        self.sim, self.console, self.seen = sim, console, 0

    def update(self) -> None:
        events = list(self.sim.watch.events)
        for t, text in events[self.seen:] if len(events) >= self.seen else events:
            self.console.print(f"{t:7.1f}  {text}", highlight=False)
        self.seen = len(events)
