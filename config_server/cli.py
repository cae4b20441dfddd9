"""`fleet server validate|run|devices|logs`: the config server's commands."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from fleet import topics
from fleet.mqtt import add_broker_arguments, settings_from_args


def register(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("validate", help="check every device file; exit 1 on any error",
                         description="Check every DIR/<id>.hjson with its includes against the component library. "
                                     "Prints each problem as FILE:LINE:COL: path.to.key: message.")
    _devices_argument(p)
    _library_argument(p)
    p.add_argument("ids", nargs="*", metavar="ID", help="only these devices (default: all)")
    p.set_defaults(func=_validate)

    p = verbs.add_parser("run", help="serve configs over MQTT, collect acks, status and logs")
    _devices_argument(p)
    _library_argument(p)
    _state_argument(p)
    p.add_argument("--keys", type=Path, default=os.environ.get("FLEET_KEYS"),
                   help="folder of KEYS/<id>.key device keys: configs of those devices are signed (env FLEET_KEYS)")
    p.add_argument("--server-id", help="this process's name among several (default: host-pid)")
    p.add_argument("--log-days", type=float, default=14.0, help="keep device logs this many days (default %(default)s)")
    p.add_argument("--log-max-mb", type=float, default=64.0, help="and at most this many MB (default %(default)s)")
    add_broker_arguments(p)
    p.set_defaults(func=_run)

    p = verbs.add_parser("devices", help="the fleet as a table: status, firmware, config sent and acked")
    _devices_argument(p)
    _library_argument(p)
    _state_argument(p)
    p.add_argument("--json", action="store_true", help="one JSON object per device instead of a table")
    p.set_defaults(func=_devices)

    p = verbs.add_parser("logs", help="the logs collected from the devices")
    p.add_argument("id", nargs="?", help="a device id (default: every device)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--level", choices=topics.LOG_LEVELS, default="debug", help="this level and above")
    p.add_argument("-n", "--lines", type=int, default=50, help="how many of the last lines (default %(default)s)")
    _state_argument(p)
    p.set_defaults(func=_logs)


def _devices_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=Path, default=os.environ.get("FLEET_DEVICES", "devices"),
                   help="the registry folder of DIR/<id>.hjson files (env FLEET_DEVICES; default %(default)s)")


def _library_argument(p: argparse.ArgumentParser) -> None:
    from config_server.declarations import REPO

    p.add_argument("--library", type=Path, default=REPO,
                   help="the folder holding components/ and pysmartnode/ (default: this checkout)")


def _state_argument(p: argparse.ArgumentParser) -> None:
    from config_server.state import default_path

    p.add_argument("--state", type=Path, default=os.environ.get("FLEET_SERVER_STATE") or default_path(),
                   help="the SQLite state file, shared by server processes (env FLEET_SERVER_STATE; "
                        "default %(default)s)")


def _validate(args: argparse.Namespace) -> int:
    from config_server.declarations import Library
    from config_server.devicefile import read_device
    from config_server.registry import device_files

    if not args.devices.is_dir():
        print(f"{args.devices}: no such folder", file=sys.stderr)
        return 1
    started = time.perf_counter()
    library, cache = Library(args.library), {}
    paths = device_files(args.devices)
    if args.ids:
        wanted = set(args.ids)
        paths = [p for p in paths if p.name.removesuffix(".hjson") in wanted]
        for missing in wanted - {p.name.removesuffix(".hjson") for p in paths}:
            print(f"{args.devices / (missing + '.hjson')}: no such device file", file=sys.stderr)
            return 1
    bad = errors = warnings = 0
    for path in paths:
        checked = read_device(path, library, cache)
        for w in checked.warnings:
            print(f"{w} [warning]", file=sys.stderr)
        for issue in checked.issues:
            print(issue)
        warnings += len(checked.warnings)
        errors += len(checked.issues)
        bad += not checked.ok
    took = time.perf_counter() - started
    print(f"{len(paths)} device files: {len(paths) - bad} valid, {bad} with {errors} error{'s' * (errors != 1)}"
          f", {warnings} warning{'s' * (warnings != 1)} ({took:.2f} s)", file=sys.stderr)
    return 1 if bad else 0


def _run(args: argparse.Namespace) -> int:
    from config_server.server import ConfigServer, ServerOptions, default_server_id

    options = ServerOptions(devices=args.devices, state=args.state, library=args.library, keys=args.keys,
                            server_id=args.server_id or default_server_id(), log_max_age=args.log_days * 86400,
                            log_max_bytes=int(args.log_max_mb * 2**20))
    settings = settings_from_args(args)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with ConfigServer(settings, options) as server:
            print(f"config server {options.server_id}: {len(server.registry.served)} devices from {args.devices}, "
                  f"broker {settings.public_url}, home {settings.home}, state {args.state}", file=sys.stderr)
            await stop.wait()

    asyncio.run(serve())
    return 0


def _devices(args: argparse.Namespace) -> int:
    from config_server.declarations import Library
    from config_server.registry import Registry
    from config_server.state import State

    state = State(args.state)
    rows = {r["id"]: r for r in state.devices()}
    registry = Registry(args.devices, Library(args.library))
    logging.getLogger("config_server.registry").setLevel(logging.CRITICAL)  # the FILE column says it
    registry.scan()  # without the state: the current file's content, its version counter is not needed
    current = {d: s.assembled.hash8 for d, s in registry.served.items()}
    ids = sorted(set(rows) | set(registry.checked))
    out = []
    for device in ids:
        r = rows.get(device, {})
        checked = registry.checked.get(device)
        file = "none" if checked is None else "ok" if checked.ok else f"{len(checked.issues)} errors"
        held = r.get("holds") or ""
        up_to_date = device in current and held.endswith("-" + current[device])
        status = r.get("status") or "never seen"
        if checked is None and r.get("unknown_requests"):
            status = f"unknown, asked {r['unknown_requests']}x"
        out.append({"id": device, "status": status, "seen": _ago(r.get("last_seen")),
                    "fw": r.get("fw") or "", "platform": r.get("platform") or "", "file": file,
                    "holds": held + (" (current)" if up_to_date else ""), "sent": r.get("sent") or "",
                    "ack": " ".join(x for x in (r.get("acked"), r.get("ack_state")) if x),
                    "unknown_requests": r.get("unknown_requests") or 0})
    if args.json:
        for row in out:
            print(json.dumps(row))
        return 0
    cols = ["id", "status", "seen", "fw", "platform", "file", "holds", "sent", "ack"]
    widths = {c: max([len(c), *(len(str(row[c])) for row in out)]) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for row in out:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in cols).rstrip())
    return 0


def _logs(args: argparse.Namespace) -> int:
    from config_server.state import State

    state = State(args.state)
    last = 0
    lines = state.logs(args.id, args.level, limit=args.lines)
    try:
        while True:
            for line in lines:
                stamp = datetime.datetime.fromtimestamp(line.time).strftime("%Y-%m-%d %H:%M:%S")
                print(f"{stamp} {line.level:<8} {line.device}: {line.line}", flush=True)
                last = line.id
            if not args.follow:
                return 0
            time.sleep(0.5)
            lines = state.logs(args.id, args.level, after_id=last)
    except BrokenPipeError:
        return 0


def _ago(t: float | None) -> str:
    if not t:
        return ""
    s = max(0, int(time.time() - t))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"
