"""The config server killed (SIGKILL) in the middle of a boot storm, then started again: every device
still gets its whole config. The server runs as `fleet server run` (a process of its own, so the kill
is real); the storm is many lightweight protocol clients (bench/config_server_storm.py's BareNode, the
node's side of docs/PROTOCOL.md section 4 on a bare MQTT connection) plus one real node (pysmartnode on
the MicroPython unix port), against a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from bench.config_server_storm import BareNode, write_registry
from config_server.pieces import PieceError
from config_server.server import ConfigServer, ServerOptions
from fleet import topics
from fleet.broker import Mosquitto
from fleet.mqtt import BrokerSettings, FleetClient
from fleet.upy import REPO
from fleet.vnode import VirtualNode
from tests.faultproxy import FaultProxy, report
from tests.nodeproto import Observer
from tests.test_config_server_node import DEVICE as REAL_DEVICE

DEVICES = 300
RETRY = 2.0  # the light clients ask again after this long without a config (a node: 5 s ±20 %, doubling)


class PatientNode(BareNode):
    """A BareNode that asks again while unanswered, and starts over on a set cut short, as a node does."""

    asks = 0

    async def configure(self, go: asyncio.Event) -> None:
        # Started per client by the test; ends once the client is configured.
        reader = asyncio.create_task(self._read_until_done(go), name=f"patient-{self.device}")
        await go.wait()
        request = json.dumps({"v": None, "platform": "esp32", "max": self.max, "fw": "0.1.0"}).encode()
        while not self.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.done.wait()), RETRY)
            if not self.done.is_set():
                self.asks += 1
                self.publish(topics.config_request(self.home, self.device), request)
        await reader

    async def _read_until_done(self, go: asyncio.Event) -> None:
        while not self.done.is_set():
            with contextlib.suppress(PieceError):  # the rest of a set never came: the next one starts at 0
                await self.run(go)


def start_server(folder: Path, work: Path, broker: Mosquitto, home: str, n: int) -> asyncio.subprocess.Process:
    log = work / f"server{n}.log"
    return asyncio.create_subprocess_exec(  # type: ignore[return-value]
        sys.executable, "-m", "fleet.cli", "server", "run", "--devices", str(folder), "--state",
        str(work / "state.sqlite"), "--broker", broker.url, "--home", home, "--server-id", "storm", cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=asyncio.subprocess.DEVNULL, stderr=log.open("w"))


async def ready(work: Path, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while "config server storm" not in (work / f"server{n}.log").read_text():
        assert time.monotonic() < deadline, (work / f"server{n}.log").read_text()
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_server_killed_during_a_boot_storm_every_device_configured(
        mosquitto: Mosquitto, settings: BrokerSettings, tmp_path: Path) -> None:
    home = settings.home
    folder = tmp_path / "devices"
    ids = write_registry(folder, DEVICES)
    real = f"cs{home[1:9]}"
    (folder / f"{real}.hjson").write_text(REAL_DEVICE)
    server = await start_server(folder, tmp_path, mosquitto, home, 0)
    try:
        await ready(tmp_path, 0)
        clients = [PatientNode(mosquitto.host, mosquitto.port, home, d, 1024) for d in ids]
        for i in range(0, len(clients), 100):
            await asyncio.gather(*(c.connect() for c in clients[i:i + 100]))
        go = asyncio.Event()
        storm = [asyncio.create_task(c.configure(go), name=f"storm-{c.device}") for c in clients]
        async with Observer(settings, topics.config_ack(home, real)) as obs, \
                VirtualNode(tmp_path / "fs", real, settings) as node:
            go.set()
            t0 = time.monotonic()
            while sum(c.done.is_set() for c in clients) < DEVICES // 4:
                await asyncio.sleep(0.002)
            server.send_signal(signal.SIGKILL)
            await server.wait()
            killed_at = time.monotonic()
            before = sum(c.done.is_set() for c in clients)
            real_before = [json.loads(p)["state"] for _, p, _ in obs.msgs]
            await asyncio.sleep(1.0)  # down for a second
            server = await start_server(folder, tmp_path, mosquitto, home, 1)
            restarted = time.monotonic()
            await ready(tmp_path, 1)
            serving = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*storm), 60)
            all_done = time.monotonic()
            applied = await obs.wait_json(topics.config_ack(home, real), lambda d: d["state"] == "applied",
                                          timeout=40)
            real_done = time.monotonic()
            assert applied["failed"] == {}
            assert node.exits == [3]  # configured once: applied by one restart
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGINT)
            await asyncio.wait_for(server.wait(), 20)
    retried = sum(c.asks > 0 for c in clients)
    assert all(c.configured for c in clients)
    report("config server killed in a boot storm", devices=DEVICES + 1, configured_before_kill=before,
           kill_after_s=round(killed_at - t0, 2), server_start_s=round(serving - restarted, 2),
           all_configured_after_restart_s=round(all_done - restarted, 2), real_node_acks_before_kill=real_before,
           real_node_applied_after_restart_s=round(real_done - restarted, 2), clients_that_asked_again=retried,
           light_client_retry_s=RETRY)
    assert before < DEVICES  # the kill fell inside the storm
    assert all_done - restarted < 30


async def configure_fresh(broker_host: str, port: int, home: str, ids: list[str]) -> float:
    """New light clients for `ids`, all asking at once; seconds until every one is configured."""
    clients = [PatientNode(broker_host, port, home, d, 1024) for d in ids]
    await asyncio.gather(*(c.connect() for c in clients))
    go = asyncio.Event()
    tasks = [asyncio.create_task(c.configure(go), name=f"fresh-{c.device}") for c in clients]
    t0 = time.monotonic()
    go.set()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for c in clients:
            c.writer.close()
    return time.monotonic() - t0


async def test_server_link_faults_found_and_answering_again(mosquitto_factory, home: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's MQTT link through the fault proxy (keepalive 2 s here, 30 s by default), and its
    broker restarted: each time it finds the lost link, reconnects, and answers the next requests."""
    monkeypatch.setattr("config_server.server.FleetClient", functools.partial(FleetClient, keepalive=2))
    broker: Mosquitto = mosquitto_factory()
    ids = write_registry(tmp_path / "devices", 20)
    options = ServerOptions(devices=tmp_path / "devices", state=tmp_path / "state.sqlite", server_id="lf")
    figures: dict[str, tuple[float, float, float]] = {}
    with FaultProxy("127.0.0.1", broker.port) as proxy:
        async with ConfigServer(BrokerSettings(proxy.url, home), options) as server:
            for fault in ("stall", "cut", "broker restart"):
                t0 = time.monotonic()
                if fault == "stall":
                    proxy.stall()
                elif fault == "cut":
                    proxy.cut()
                else:
                    broker.stop()
                    await asyncio.sleep(0.5)
                while server._client is not None:  # found the link lost
                    assert time.monotonic() - t0 < 15, f"{fault}: never noticed"
                    await asyncio.sleep(0.02)
                found = time.monotonic() - t0
                proxy.resume()
                if fault == "broker restart":
                    broker.start()
                t1 = time.monotonic()
                while server._client is None:
                    assert time.monotonic() - t1 < 15, f"{fault}: never reconnected"
                    await asyncio.sleep(0.02)
                back = time.monotonic() - t1
                answered = await configure_fresh(broker.host, broker.port, home, ids)
                figures[fault.replace(" ", "_")] = (round(found, 2), round(back, 2), round(answered, 2))
    report("config server link faults: [found_s, reconnected_s, then 20 configured_s]", keepalive_s=2, **figures)
    assert all(found < 3 * 2 + 3 and back < 10 and answered < 10 for found, back, answered in figures.values())
