"""OBD bridge throughput and added latency, against python-OBD's own `obd.Async` on the same emulator.

    .venv/bin/python -m bench.hub_obd [--seconds 4] [--rounds 5]

Starts Mosquitto and the ELM327 emulator (tests/elm.py), then per round:
1. `obd.Async(delay_cmds=0)` watching RPM and SPEED: callbacks per second (python-OBD alone);
2. the OBD job in the hub service (hub/service.py) watching RPM and SPEED at rate 0 (as fast as the
   adapter answers), with `mosquitto_sub` (a separate C process) printing each message's arrival
   time: values per second delivered, and the added latency `arrival - time` (`time` is the answer's
   timestamp, set by python-OBD as it decodes the adapter's answer).
The machine's other load moves the ratio: each bridged value costs CPU in the hub, the broker and the
subscriber that python-OBD alone does not spend, so read the median and the range.
Then one paced run (5 commands at 10/s each, the load of a real dashboard) for latency at rest.
Prints one figure a line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import obd

from fleet.broker import Mosquitto
from fleet.mqtt import BrokerSettings
from hub import config
from hub.service import HubService
from tests.elm import Emulator

HUB = "car"
HOME = "bench"


def baseline(url: str, seconds: float) -> float:
    """Callbacks per second of python-OBD's own async loop watching RPM and SPEED."""
    stamps: list[float] = []
    lock = threading.Lock()

    def got(resp: obd.OBDResponse) -> None:
        if not resp.is_null():
            with lock:
                stamps.append(time.monotonic())

    conn = obd.Async(url, baudrate=38400, protocol="6", delay_cmds=0)
    conn.watch(obd.commands.RPM, callback=got)
    conn.watch(obd.commands.SPEED, callback=got)
    conn.start()
    time.sleep(seconds + 0.5)
    conn.stop()
    conn.close()
    time.sleep(0.6)  # python-OBD cannot reopen the port at once
    return _rate(stamps, skip=0.5)


def _rate(stamps: list[float], skip: float) -> float:
    """Events per second after the first `skip` seconds."""
    if not stamps:
        return 0.0
    kept = [t for t in stamps if t >= stamps[0] + skip]
    return (len(kept) - 1) / (kept[-1] - kept[0]) if len(kept) > 1 else 0.0


async def bridge(settings: BrokerSettings, url: str, watch: dict[str, float], seconds: float,
                 workdir: Path) -> tuple[float, list[float]]:
    """Values per second delivered to a subscriber, and each value's added latency in seconds."""
    topics = [f"{HOME}/{HUB}/obd/{name}" for name in watch]
    out = workdir / "sub.txt"
    connect_allowance = 3.0
    with out.open("wb") as sink:
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", settings.host, "-p", str(settings.port), "-V", "mqttv5", "-q", "0",
             "-W", str(int(seconds + connect_allowance + 1.5)), "-F", "%U %p",
             *(a for t in topics for a in ("-t", t))], stdout=sink, stderr=subprocess.DEVNULL)
        await asyncio.sleep(0.3)  # subscribed before the first value
        section = {"port": url, "baudrate": 38400, "protocol": "6", "watch": watch, "discovery": False,
                   "dtc_interval": 0, "low_voltage": None}
        cfg = config.loads(json.dumps({"id": HUB, "jobs": ["obd"], "obd": section}), "bench.hjson")
        cfg.workdir = workdir
        async with HubService(cfg, settings):  # the real hub service, running the job as in the car
            await asyncio.sleep(seconds + connect_allowance)
        await asyncio.to_thread(sub.wait)
    await asyncio.sleep(0.6)  # python-OBD cannot reopen the port at once
    arrivals: list[float] = []
    latency: list[float] = []
    for line in out.read_bytes().splitlines():
        stamp, _, payload = line.partition(b" ")
        arrived = float(stamp)
        arrivals.append(arrived)
        latency.append(arrived - json.loads(payload)["time"])
    return _rate(arrivals, skip=0.5), latency


def _ms(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] * 1000 if len(values) > 1 else float("nan")


def report(label: str, latency: list[float]) -> None:
    print(f"{label} latency answer→MQTT delivery: p50 {_ms(latency, 0.5):.2f} ms, "
          f"p99 {_ms(latency, 0.99):.2f} ms, max {max(latency) * 1000:.2f} ms ({len(latency)} values)")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-obd-") as tmp, \
            Mosquitto(Path(tmp) / "mosquitto") as broker, Emulator(Path(tmp) / "elm") as elm:
        settings = BrokerSettings(broker.url, HOME)
        ratios: list[float] = []
        all_latency: list[float] = []
        for n in range(args.rounds):
            alone = await asyncio.to_thread(baseline, elm.url, args.seconds)
            bridged, latency = await bridge(settings, elm.url, {"RPM": 0, "SPEED": 0}, args.seconds, Path(tmp))
            all_latency += latency
            ratios.append(bridged / alone if alone else 0.0)
            print(f"round {n + 1}: obd.Async {alone:.0f} values/s, bridge to MQTT {bridged:.0f} values/s, "
                  f"ratio {ratios[-1]:.2f}")
        print(f"ratio bridge/obd.Async: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-"
              f"{max(ratios):.2f} ({len(ratios)} rounds; goal >= 0.9)")
        report("full speed:", all_latency)
        paced: dict[str, Any] = dict.fromkeys(["RPM", "SPEED", "COOLANT_TEMP", "THROTTLE_POS", "ENGINE_LOAD"], 10)
        rate, latency = await bridge(settings, elm.url, paced, args.seconds, Path(tmp))
        print(f"paced (5 commands at 10/s): {rate:.0f} values/s delivered")
        report("paced:", latency)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run (default 4)")
    parser.add_argument("--rounds", type=int, default=5, help="Async/bridge pairs (default 5)")
    asyncio.run(main(parser.parse_args()))
