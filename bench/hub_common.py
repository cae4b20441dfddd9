"""What the hub benches share: a Mosquitto, and `fleet hub run` as a process of its own (so its CPU time
and its event loop are its own, as in the car)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.broker import Mosquitto

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def hub_process(hub_hjson: str, home: str = "bench") -> Iterator[tuple[Mosquitto, subprocess.Popen[bytes]]]:
    """A Mosquitto and `fleet hub run` on `hub_hjson` against it, ready (its status is `online`)."""
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp:
        work = Path(tmp)
        (work / "hub.hjson").write_text(hub_hjson.replace("WORKDIR", str(work / "data")))
        # As the hub's own broker: packets go out at once (see hub.service._no_delay).
        # $SYS every second: the benches read the broker's own count of dropped messages.
        with Mosquitto(work / "mosquitto", extra=["set_tcp_nodelay true", "sys_interval 1"]) as broker:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fleet.cli", "hub", "run", "--config", str(work / "hub.hjson"),
                 "--broker", broker.url, "--home", home],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)
            try:
                wait_online(broker, home)
                yield broker, proc
            finally:
                proc.terminate()
                proc.wait(10)


def client(broker: Mosquitto, name: str) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}")
    c.connect(broker.host, broker.port)
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def wait_online(broker: Mosquitto, home: str, hub: str = "bench", timeout: float = 30) -> None:
    seen: list[bytes] = []
    c = client(broker, "wait")
    c.on_message = lambda _c, _u, msg: seen.append(msg.payload)
    c.subscribe(f"{home}/{hub}/status")
    deadline = time.monotonic() + timeout
    while b"online" not in seen:
        c.loop(0.1)
        if time.monotonic() > deadline:
            raise SystemExit(f"the hub did not come online within {timeout} s")
    c.disconnect()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
