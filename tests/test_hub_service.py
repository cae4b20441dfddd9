"""The hub service against a real Mosquitto: it starts from examples/hub.hjson, a job that raises is
restarted and reported while the others run, and it is a device on the protocol (status, info, logs,
cmd/set, discovery)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fleet.broker import Mosquitto
from fleet.mqtt import BrokerSettings
from hub import config, jobs
from hub.job import Job
from tests.hub_helpers import Watch, running_hub

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hub.hjson"


class CrashyJob(Job):
    """Raises a moment after each start."""

    NAME: ClassVar[str] = "crashy"
    runs = 0

    async def run(self) -> None:
        type(self).runs += 1
        await asyncio.sleep(0.05)
        raise RuntimeError(f"boom {type(self).runs}")


class TickerJob(Job):
    """Publishes a counter every 50 ms: it must never stop while its neighbour crashes."""

    NAME: ClassVar[str] = "ticker"

    async def run(self) -> None:
        n = 0
        while True:
            n += 1
            await self.hub.publish(self.hub.topic("ticker"), str(n), qos=0)
            await asyncio.sleep(0.05)

    def stats(self) -> dict[str, float]:
        return {"cpu": 1.5, "rss": 1234}


@pytest.fixture
def test_jobs() -> Any:
    jobs.register("crashy", CrashyJob)
    jobs.register("ticker", TickerJob)
    yield
    jobs.REGISTRY.pop("crashy")
    jobs.REGISTRY.pop("ticker")


def test_the_example_is_valid_with_every_job() -> None:
    cfg = config.load(EXAMPLE)
    assert cfg.jobs == ["obd", "camera", "upload", "power", "rules", "stats"] and cfg.local_broker.enabled
    assert {r.name for r in cfg.rules("home")} == {"key_off", "key_on", "home_light", "redline"}
    key_off = next(r for r in cfg.rules("home") if r.name == "key_off")
    assert [s.label for s in key_off.steps] == ["camera.stop", "upload.wait_empty", "power.shutdown",
                                                 "power.release"]


async def test_starts_from_the_example_with_its_local_broker_bridged_home(
        mosquitto: Mosquitto, settings: BrokerSettings, tmp_path: Path) -> None:
    """examples/hub.hjson as written (its own Mosquitto bridged to the home broker), with only the jobs
    of this issue running: the others are reported off and the rules that use them are left out."""
    def tweak(cfg: config.HubConfig) -> None:
        cfg.local_broker.port = 0  # any free port: the example's 1883 may be taken here
        cfg.bridge.restart = (1, 2)
        cfg.section("stats")["interval"] = 0.5

    home, car = settings.home, "car"
    async with Watch(settings, f"{home}/{car}/#", f"homeassistant/+/{car}/#") as w:
        async with running_hub(EXAMPLE.read_text(), settings, tmp_path, ["rules", "stats"], tweak) as hub:
            assert hub.local is not None and hub.link_settings.port != settings.port
            await w.wait(lambda s: s.topic == f"{home}/{car}/status" and s.payload == "online", what="online at home")
            jobs_state = await w.wait(lambda s: s.topic == f"{home}/{car}/jobs"
                                      and s.json()["rules"]["state"] == "running"
                                      and s.json()["stats"]["state"] == "running", what="rules and stats running")
            states = jobs_state.json()
            assert {states[j]["state"] for j in ("obd", "camera", "upload", "power")} == {"off"}
            await w.wait(lambda s: s.topic == f"homeassistant/sensor/{car}/job_rules/config"
                         and s.json()["availability_topic"] == f"{home}/{car}/status", what="discovery")
            # A command from home reaches the car through the bridge.
            w.seen.clear()
            await w.publish(f"{home}/{car}/cmd/set", "info")
            info = await w.wait(lambda s: s.topic == f"{home}/{car}/info" and not s.retain, what="info")
            assert info.json()["platform"] == "linux" and "rules" in info.json()["components"]
            stats = await w.wait(lambda s: s.topic == f"{home}/{car}/stats", what="stats")
            figures = stats.json()
            assert {"rules", "stats", "hub"} <= set(figures["loop"]) and figures["process"]["rss"] > 0
        await w.wait(lambda s: s.topic == f"{home}/{car}/status" and s.payload == "offline", what="offline")


async def test_a_job_that_raises_is_restarted_and_reported_while_the_others_run(
        settings: BrokerSettings, tmp_path: Path, test_jobs: None) -> None:
    text = """
    id: t1
    jobs: ["crashy", "ticker", "stats"]
    restart: { min: 0.1, max: 0.4 }
    stats: { interval: 0.5 }
    """
    home = settings.home
    async with Watch(settings, f"{home}/t1/#", f"{home}/log/+/t1") as w, \
            running_hub(text, settings, tmp_path) as hub:
        report = await w.wait(lambda s: s.topic == f"{home}/t1/jobs" and s.json()["crashy"]["restarts"] >= 3,
                              what="three restarts")
        crashy = report.json()["crashy"]
        assert crashy["error"].startswith("RuntimeError: boom") and crashy["state"] in ("restarting", "running")
        assert report.json()["ticker"] == {"state": "running", "restarts": 0, "error": None}
        log = await w.wait(lambda s: s.topic == f"{home}/log/error/t1", what="an error log line")
        assert "crashy: failed: RuntimeError: boom" in log.payload
        # The backoff doubles: 0.1, 0.2, 0.4, 0.4 … and the ticker never missed a beat meanwhile.
        await w.wait(lambda s: s.topic == f"{home}/t1/ticker" and int(s.payload) >= 12, what="ticks")
        ticks = [int(s.payload) for s in w.on(f"{home}/t1/ticker")]
        assert ticks == list(range(1, len(ticks) + 1))
        stats = await w.wait(lambda s: s.topic == f"{home}/t1/stats", what="stats")
        assert stats.json()["jobs"]["ticker"] == {"cpu": 1.5, "rss": 1234}
        # 20 ticks/s, counted once although the hub's `#` and its own filters overlap at the broker.
        assert 8 < stats.json()["topics"][f"{home}/t1/ticker"]["msgs"] < 26
        assert stats.json()["loop"]["ticker"] > 0
        # `cmd/set restart` restarts every job; an unknown command is logged and dropped.
        await w.publish(f"{home}/t1/cmd/set", "dance")
        await w.wait(lambda s: s.topic == f"{home}/log/warning/t1" and "unknown command" in s.payload,
                     what="unknown command logged")
        w.seen.clear()
        await w.publish(f"{home}/t1/cmd/set", "restart")
        await w.wait(lambda s: s.topic == f"{home}/t1/ticker" and s.payload == "1", what="ticker started again")
        assert hub.job("ticker") is not None


async def test_a_retained_command_is_ignored(settings: BrokerSettings, tmp_path: Path) -> None:
    home = settings.home
    async with Watch(settings, f"{home}/t2/info") as w:
        await w.publish(f"{home}/t2/cmd/set", "restart", retain=True)
        async with running_hub('id: t2\njobs: ["stats"]\n', settings, tmp_path) as hub:
            await w.wait(lambda s: s.topic == f"{home}/t2/info", what="info on connect")
            await asyncio.sleep(0.5)
            assert hub.states["stats"]["restarts"] == 0 and hub.states["stats"]["state"] == "running"
        await w.publish(f"{home}/t2/cmd/set", "", retain=True)


async def test_reload_keeps_running_on_a_bad_file(settings: BrokerSettings, tmp_path: Path) -> None:
    path = tmp_path / "hub.hjson"
    path.write_text('id: t3\njobs: ["stats"]\n')
    home = settings.home
    cfg = config.load(path)
    cfg.workdir = tmp_path
    from hub.service import HubService

    async with Watch(settings, f"{home}/log/#", f"{home}/t3/jobs") as w, HubService(cfg, settings) as hub:
        await hub.wait_connected()
        path.write_text('id: t3\njobs: ["stats", "rules"]\nrules: { x: { on: "stats.nothing", do: [] } }\n')
        await w.publish(f"{home}/t3/cmd/set", "reload")
        err = await w.wait(lambda s: s.topic == f"{home}/log/error/t3", what="reload refused")
        assert "hub.hjson:3:" in err.payload and "reload refused" in err.payload
        path.write_text('id: t3\njobs: ["stats", "rules"]\n')
        await w.publish(f"{home}/t3/cmd/set", "reload")
        await w.wait(lambda s: s.topic == f"{home}/t3/jobs" and json.loads(s.payload).get("rules", {}).get(
            "state") == "running", what="rules running after reload")


@pytest.mark.slow
async def test_subscriptions_state_and_logs_survive_a_broker_restart(
        mosquitto_factory: Callable[..., Mosquitto], home: str, tmp_path: Path) -> None:
    broker = mosquitto_factory()
    settings = BrokerSettings(broker.url, home)
    text = """
    id: t4
    jobs: ["rules"]
    rules: { ping: { on: { topic: "{home}/ping" }, do: [ { publish: "{home}/pong", payload: "1" } ] } }
    """
    async with running_hub(text, settings, tmp_path) as hub:
        broker.stop()  # every client is cut off
        hub.logger("rules").warning("logged while the broker was away")
        broker.start()  # same port
        async with Watch(settings, f"{home}/t4/status", f"{home}/pong", f"{home}/log/#",
                         "homeassistant/+/t4/#") as w:
            await w.wait(lambda s: s.payload == "online", timeout=15, what="online again")
            await hub.wait_connected(15)
            log = await w.wait(lambda s: s.topic == f"{home}/log/warning/t4", what="the log line kept offline")
            assert log.payload.endswith("Z rules: logged while the broker was away")
            await w.publish(f"{home}/ping", "x")
            await w.wait(lambda s: s.topic == f"{home}/pong", what="the rule still reacts")
            # Home Assistant coming online gets the discovery again.
            await w.wait(lambda s: s.topic == "homeassistant/sensor/t4/job_rules/config", what="discovery")
            n = len(w.on("homeassistant/sensor/t4/job_rules/config"))
            await w.publish("homeassistant/status", "online")
            await w.wait(lambda s: len(w.on("homeassistant/sensor/t4/job_rules/config")) > n, what="again")
        assert hub.info()["reconnects"] == 1 and hub.states["rules"]["restarts"] == 0


@pytest.mark.slow
async def test_fleet_hub_run_starts_and_stops_cleanly_on_sigterm(settings: BrokerSettings, tmp_path: Path) -> None:
    path = tmp_path / "hub.hjson"
    path.write_text(f'id: t5\nworkdir: {tmp_path / "data"}\njobs: ["rules", "stats"]\n')
    home = settings.home
    async with Watch(settings, f"{home}/t5/status", f"{home}/t5/jobs") as w:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleet.cli", "hub", "run", "--config", str(path), "--broker", settings.url,
            "--home", home, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await w.wait(lambda s: s.payload == "online", timeout=30, what="online")
            await w.wait(lambda s: s.topic.endswith("/jobs") and s.json()["stats"]["state"] == "running")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
        await w.wait(lambda s: s.topic.endswith("/jobs") and s.json()["stats"]["state"] == "stopped")
        assert w.on(f"{home}/t5/status")[-1].payload == "offline"
