"""`fleet sim`: the whole fleet on this machine, in one command.

A broker (the given one; else Mosquitto if installed; else the embedded broker), the config server on
the device files (`--devices`, default examples/devices) plus `--nodes N` generated ones, every device
as a virtual node (the real node code on the MicroPython unix port, virtual chips), the hub with the
PyAV test-pattern camera, the ELM327 emulator as its car, mock ignition and latch and an SFTP server as
its upload target; and a scenario (default examples/scenarios/drive.hjson) that drives inputs through
`<home>/_sim/…` and says what it expects. A live view while it runs, a summary at the end; the exit
code is 0 only if every expectation held. Ctrl-C stops everything. All files go under `--dir`
(default: a temporary folder, removed after a run that passed). See docs/SIM.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

from fleet.mqtt import add_broker_arguments


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--nodes", type=int, default=0, metavar="N", help="generated nodes besides the device files "
                        "(each a climate sensor and a relay; default %(default)s)")
    parser.add_argument("--duration", type=float, metavar="S", help="run this many seconds (default: until the "
                        "scenario has run; 0: until Ctrl-C); expectations not met by then fail")
    parser.add_argument("--devices", type=Path, metavar="DIR", help="device files (default examples/devices)")
    parser.add_argument("--scenario", type=Path, metavar="FILE",
                        help="scenario file (default examples/scenarios/drive.hjson)")
    parser.add_argument("--dir", type=Path, help="folder for every file of the run (default: temporary)")
    parser.add_argument("--heap", default="256K", help="each virtual node's MicroPython heap (default %(default)s)")
    parser.add_argument("--broker-kind", choices=("auto", "mosquitto", "embedded"), default="auto",
                        help="the broker to start when no --broker is given (default %(default)s)")
    parser.add_argument("--no-hub", action="store_true", help="nodes only: no hub, camera, car or NAS")
    parser.add_argument("--no-view", action="store_true", help="plain progress lines instead of the live view")
    add_broker_arguments(parser)
    # No default broker: without --broker (or FLEET_BROKER) the sim starts its own.
    parser.set_defaults(broker=os.environ.get("FLEET_BROKER"), func=_handler)


def _handler(args: argparse.Namespace) -> int:
    from fleet.sim.run import DEFAULT_SCENARIO, EXAMPLE_DEVICES, Options
    from fleet.vnode import parse_heap

    options = Options(folder=args.dir, nodes=args.nodes, duration=args.duration, broker=args.broker,
                      broker_kind=args.broker_kind, home=args.home, ca=args.ca, cert=args.cert, key=args.key,
                      devices=args.devices or EXAMPLE_DEVICES, scenario=args.scenario or DEFAULT_SCENARIO,
                      heap=parse_heap(args.heap), hub=not args.no_hub)
    if args.nodes < 0:
        print("--nodes: a number ≥ 0", file=sys.stderr)
        return 2
    return asyncio.run(simulate(options, live=not args.no_view and sys.stdout.isatty()))


async def simulate(options: object, live: bool) -> int:
    from rich.console import Console
    from rich.live import Live

    from fleet.sim.run import Options, Sim
    from fleet.sim.view import Ticker, render, summary

    assert isinstance(options, Options)
    sim = Sim(options)  # ConfigError for a bad scenario, before anything starts
    console = Console()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(sim.run(stop), name="sim-run")  # ends when the run has stopped everything
    try:
        if live:
            with Live(console=console, refresh_per_second=2, transient=False) as view:
                while not runner.done():
                    await asyncio.wait([runner], timeout=0.5)
                    if hasattr(sim, "watch"):
                        view.update(render(sim))
        else:
            ticker = None
            while not runner.done():
                await asyncio.wait([runner], timeout=0.5)
                if ticker is None and hasattr(sim, "watch"):
                    ticker = Ticker(sim, console)
                if ticker:
                    ticker.update()
        await runner
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if not runner.done():
            stop.set()
            with contextlib.suppress(Exception):
                await runner
    keep = not (sim.ok and sim.temporary)
    console.print(summary(sim, keep))
    if not keep:
        shutil.rmtree(sim.folder, ignore_errors=True)
    return 0 if sim.ok else 130 if sim.interrupted else 1
