"""`fleet hub …`: run the hub service, watch traffic, print the bridge section."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from pathlib import Path

from fleet.mqtt import add_broker_arguments, settings_from_args

# Modules that add verbs of their own to `fleet hub` through `register(verbs)` (e.g. `fleet hub upload
# status`); a module not written yet is skipped.
EXTRA_VERBS = ("hub.upload.cli",)


def register(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="run the hub service from hub.hjson",
                           description="Run the hub: its jobs, rules and stats, as a device on the protocol. "
                                       "--broker is the home broker (bridged to when local_broker is on).")
    run.add_argument("--config", type=Path, required=True, help="the hub.hjson file")
    run.add_argument("--jobs", help="run only these of the file's jobs, comma-separated (e.g. rules,stats)")
    run.add_argument("--check", action="store_true", help="check the file, print what would run, and exit")
    add_broker_arguments(run)
    run.set_defaults(func=_cmd_run)

    top = verbs.add_parser("top", help="live msg/s and kB/s per topic group, and the hubs' jobs (any broker)")
    top.add_argument("--filter", default="#", help="topic filter to watch (default %(default)s)")
    top.add_argument("--depth", type=int, default=3, help="group topics to this many levels (default %(default)s)")
    top.add_argument("--window", type=int, default=10, help="sliding window, seconds (default %(default)s)")
    top.add_argument("--rows", type=int, default=20, help="topic groups shown (default %(default)s)")
    top.add_argument("--once", type=float, metavar="SECONDS",
                     help="watch this long, print one frame and exit (no live screen)")
    add_broker_arguments(top)
    top.set_defaults(func=_cmd_top)

    bridge = verbs.add_parser("bridge-config",
                              help="print the Mosquitto bridge section to the home broker (--broker)")
    bridge.add_argument("--config", type=Path, required=True, help="the hub.hjson file")
    add_broker_arguments(bridge)
    bridge.set_defaults(func=_cmd_bridge_config)

    for module in EXTRA_VERBS:
        try:
            extra = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        extra.register(verbs)


def _cmd_run(args: argparse.Namespace) -> int:
    from hub import config
    from hub.service import HubService

    only = [j.strip() for j in args.jobs.split(",") if j.strip()] if args.jobs else None
    cfg = config.load(args.config, only)
    settings = settings_from_args(args)
    if args.check:
        print(f"{cfg.path}: hub {cfg.id}, jobs: {', '.join(cfg.jobs) or 'none'}")
        for name in cfg.jobs:
            if name in cfg.failed:
                print(f"  job {name}: will not run: {cfg.failed[name]}")
                continue
            cls = cfg.classes[name]
            print(f"  job {name}: actions: {', '.join(cls.ACTIONS) or '-'}; events: {', '.join(cls.EVENTS) or '-'}")
        for rule in cfg.rules(settings.home):
            print(f"  rule {rule.name}: {rule.mode}, {len(rule.steps)} steps")
        return 0
    for name, why in cfg.failed.items():
        print(f"hub: job {name} will not run: {why}", file=sys.stderr)

    async def main() -> None:
        service = HubService(cfg, settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.stop)
        await service.run()

    asyncio.run(main())
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hub.jobs.stats import TrafficMeter
    from hub.top import TopView, watch

    settings = settings_from_args(args)
    view = TopView(settings, TrafficMeter(args.window, args.depth), rows=args.rows)
    asyncio.run(watch(settings, view, args.filter, args.once, Console()))
    return 0


def _cmd_bridge_config(args: argparse.Namespace) -> int:
    from hub import bridge, config

    cfg = config.load(args.config)
    settings = settings_from_args(args)
    print(f"# Mosquitto bridge of hub {cfg.id} to {settings.public_url} (from {cfg.path})")
    print("\n".join(bridge.bridge_lines(cfg, settings)))
    return 0
