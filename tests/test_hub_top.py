"""Traffic statistics: the sliding-window meter, and `fleet hub top` in a terminal (tmux) and printed
once, against a real Mosquitto with a known load and no hub running."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from rich.console import Console

from fleet.broker import Mosquitto
from fleet.mqtt import BrokerSettings
from hub.jobs.stats import TrafficMeter
from hub.top import TopView

ROOT = Path(__file__).resolve().parent.parent


def test_meter_rates_over_a_sliding_window() -> None:
    meter = TrafficMeter(window=10, depth=2, groups=("h/+/obd/#",))
    meter.started = 1000.0
    for tick in range(200):  # 20 s: 10 msg/s of 100 B on a/b/…, 5 msg/s of 1000 B on obd
        now = 1000.0 + tick / 10
        meter.add(f"a/b/c{tick % 3}", 100, now)
        if tick % 2:
            meter.add(f"h/car{tick % 4}/obd/RPM", 1000, now)
    rates = meter.rates(1020.0)
    assert list(rates) == ["a/b/#", "h/+/obd/#"]  # busiest first; the group spans both cars
    assert rates["a/b/#"] == pytest.approx((10, 1.0), rel=0.12)
    assert rates["h/+/obd/#"] == pytest.approx((5, 5.0), rel=0.12)
    assert meter.rates(1025.0)["a/b/#"][0] == pytest.approx(5, rel=0.25)  # half the window is silence
    assert meter.rates(1040.0) == {}  # the window has passed: idle groups are left out
    meter.add("short", 10, 1040.5)
    assert list(meter.rates(1041.0)) == ["short"]  # a topic no deeper than depth is its own group


def test_top_shows_a_hubs_jobs(settings: BrokerSettings) -> None:
    view = TopView(settings, TrafficMeter(5, 3))
    home = settings.home
    view.feed(f"{home}/car/jobs", b'{"obd": {"state": "restarting", "restarts": 2, "error": "OSError: no adapter"},'
                                  b' "stats": {"state": "running", "restarts": 0, "error": null}}')
    view.feed(f"{home}/car/stats", b'{"window": 10, "topics": {}, "jobs": {"obd": {"cpu": 12.5, "rss": 52000000}},'
                                   b' "loop": {"obd": 3.25, "stats": 40.0}, "lag": 1.5,'
                                   b' "process": {"cpu": 20.0, "rss": 81000000}}')
    view.feed(f"{home}/car/stats", b"garbage")  # metered, never fatal
    console = Console(record=True, width=140, force_terminal=False)
    console.print(view.render())
    text = console.export_text()
    assert "hub car  lag 1.5 ms  cpu 20.0%  rss 81.0 MB" in text
    assert re.search(r"obd\s+restarting\s+2\s+3\.2\s+12\.5\s+52\.0\s+OSError: no adapter", text), text
    assert re.search(r"stats\s+running\s+0\s+40\.0", text), text


@pytest.fixture
def load(mosquitto: Mosquitto, home: str) -> Iterator[None]:
    """200 msg/s of 100 B on <home>/load/a/x and 50 msg/s of 1000 B on <home>/load/b/y, steady."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"load-{uuid.uuid4().hex[:6]}")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    stop = threading.Event()

    def run() -> None:
        period, t = 1 / 250, time.monotonic()
        n = 0
        while not stop.is_set():
            if n % 5 == 4:
                client.publish(f"{home}/load/b/y", b"y" * 1000)
            else:
                client.publish(f"{home}/load/a/x", b"x" * 100)
            n += 1
            t += period
            time.sleep(max(0.0, t - time.monotonic()))

    # Started here, ends at teardown (stop): the known load.
    thread = threading.Thread(target=run, name="test-load", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(5)
    client.loop_stop()
    client.disconnect()


def rates_in(text: str, home: str) -> dict[str, tuple[float, float]]:
    out = {}
    for group in ("a", "b"):
        m = re.search(rf"{home}/load/{group}/#\s+([\d,.]+)\s+([\d,.]+)", text)
        assert m, text
        out[group] = (float(m[1].replace(",", "")), float(m[2].replace(",", "")))
    return out


@pytest.mark.slow
def test_fleet_hub_top_renders_rates_that_match_a_known_load(mosquitto: Mosquitto, home: str, load: None) -> None:
    cmd = [sys.executable, "-m", "fleet.cli", "hub", "top", "--broker", mosquitto.url, "--home", home,
           "--filter", f"{home}/#", "--window", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    session = f"top-{uuid.uuid4().hex[:6]}"
    tmux = shutil.which("tmux")
    assert tmux, "tmux is part of the test stack"
    # The live view in a real terminal (tmux), and one frame printed by --once, side by side.
    subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "30",
                    " ".join(f"'{c}'" for c in cmd)], check=True, env=env, cwd=ROOT)
    try:
        once = subprocess.run([*cmd, "--once", "4.5"], capture_output=True, text=True, timeout=60, env=env)
        screen = subprocess.run([tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                                check=True).stdout
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False)
    assert once.returncode == 0, once.stderr
    for text in (once.stdout, screen):
        assert "fleet hub top" in text
        rates = rates_in(text, home)
        assert rates["a"] == pytest.approx((200, 20), rel=0.15), text
        assert rates["b"] == pytest.approx((50, 50), rel=0.15), text
