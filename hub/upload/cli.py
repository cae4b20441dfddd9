"""`fleet hub upload …`: watch the uploads of a running hub, list its queue, drain it without the hub.

- `status --hub ID`: the hub's `<home>/<hub>/upload` figures as live progress bars (rich); `--once`
  prints one line and exits.
- `queue --config hub.hjson`: the rows of the queue database (state, target, verification).
- `drain --config hub.hjson`: upload everything queued, then exit: 0 when the queue is empty, 3 when
  the targets holding files cannot be reached (the files stay queued). For a hub that is not running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from fleet.mqtt import FleetClient, add_broker_arguments, settings_from_args

log = logging.getLogger("hub.upload")


def register(verbs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    upload = verbs.add_parser("upload", help="watch, list or drain the hub's upload queue")
    sub = upload.add_subparsers(dest="upload_verb", required=True, metavar="VERB")

    status = sub.add_parser("status", help="live upload progress of a hub, from <home>/<hub>/upload")
    status.add_argument("--hub", required=True, help="the hub's id")
    status.add_argument("--once", action="store_true", help="print the current figures once and exit")
    status.add_argument("--timeout", type=float, default=5.0,
                        help="with --once: seconds to wait for the figures (default %(default)s)")
    add_broker_arguments(status)
    status.set_defaults(func=_cmd_status)

    queue = sub.add_parser("queue", help="list the queue database of a hub.hjson")
    queue.add_argument("--config", type=Path, required=True, help="the hub.hjson file")
    queue.add_argument("--state", choices=("queued", "done", "lost"), help="only rows in this state")
    queue.set_defaults(func=_cmd_queue)

    drain = sub.add_parser("drain", help="upload everything queued, without the hub; exit when done")
    drain.add_argument("--config", type=Path, required=True, help="the hub.hjson file")
    drain.set_defaults(func=_cmd_drain)


def _section(config: Path) -> tuple[Any, dict[str, Any]]:
    from hub import config as hubconfig

    cfg = hubconfig.load(config, only=["upload"])
    return cfg, cfg.section("upload")


def _cmd_queue(args: argparse.Namespace) -> int:
    from hub.upload.queue import Queue

    cfg, section = _section(args.config)
    with Queue(cfg.workdir / section.get("queue", "upload.db")) as queue:
        for row in queue.rows(args.state):
            print(f"{row['state']:7} {row['target']:10} {row['verified'] or '-':6} {row['size']:>12} "
                  f"{row['path']}{'  # ' + str(row['error']) if row['error'] else ''}")
    return 0


def _cmd_drain(args: argparse.Namespace) -> int:
    from hub.jobs.upload import build_uploader

    cfg, section = _section(args.config)

    async def main() -> str:
        uploader = build_uploader(cfg.workdir, cfg.id, section, log)
        # Started here; cancelled once the queue is empty or out of reach.
        workers = asyncio.create_task(uploader.run(), name="upload-drain")
        try:
            return await uploader.wait_empty()
        finally:
            workers.cancel()
            await asyncio.gather(workers, return_exceptions=True)
            uploader.queue.close()

    result = asyncio.run(main())
    print(result)
    return 0 if result == "empty" else 3


def _cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    topic = f"{settings.home}/{args.hub}/upload"

    async def main() -> int:
        async with FleetClient(settings) as client:
            await client.subscribe(topic, 0)
            if args.once:
                try:
                    async with asyncio.timeout(args.timeout):
                        async for msg in client.messages:
                            print(describe(json.loads(bytes(msg.payload))))  # type: ignore[arg-type]
                            return 0
                except TimeoutError:
                    print(f"no upload figures on {topic} within {args.timeout:g} s", file=sys.stderr)
                    return 1
            await _live(client)
        return 0

    return asyncio.run(main())


def describe(s: dict[str, Any]) -> str:
    """One line of upload figures."""
    reach = ", ".join(f"{t} {_updown(ok)}" for t, ok in s.get("reachable", {}).items())
    line = f"queued {s.get('queued', 0)} ({_mb(s.get('bytes_pending', 0))} pending), done {s.get('done', 0)}"
    if s.get("current"):
        line += f", sending {s['current']} {_mb(s.get('current_offset') or 0)}/{_mb(s.get('current_size') or 0)}" \
                f" at {_mb(s.get('rate') or 0)}/s"
    return f"{line}; targets: {reach or 'none'}"


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


async def _live(client: FleetClient) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    # the rate is the hub's own figure (over its last 5 s), not one guessed from our updates
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[rate]}"),
               TextColumn("{task.fields[note]}"))
    with Progress(*columns, refresh_per_second=4) as bars:
        queue_bar = bars.add_task("queue", total=None, note="", rate="")
        file_bar = bars.add_task("file", total=None, note="", rate="")
        base: int | None = None  # `sent` when we started watching: the queue bar counts from there
        async for msg in client.messages:
            try:
                s = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
            except ValueError:
                continue
            sent = int(s.get("sent", 0))
            base = sent if base is None or sent < base else base
            bars.update(queue_bar, completed=sent - base, total=sent - base + int(s.get("bytes_pending", 0)),
                        rate=f"{_mb(s.get('rate') or 0)}/s", note=describe(s).split(";")[1].strip())
            bars.update(file_bar, description=s.get("current") or "idle",
                        completed=s.get("current_offset") or 0, total=s.get("current_size") or None,
                        note=f"{s.get('queued', 0)} queued")


def _updown(ok: bool | None) -> str:
    return "up" if ok else "down" if ok is False else "?"
