"""The hub killed (SIGKILL, as a crash or a watchdog would) while it uploads and in the middle of the
key-off sequence, then started again: nothing leaves the upload queue unsent, every file arrives once,
and the sequence finishes with the latch released. The hub runs as `fleet hub run` (its own process, so
the kill is real) against a real Mosquitto and a real asyncssh SFTP server; its pins are gpiozero's
MockFactory (no GPIO here), driven on `_sim` topics.

The uploader alone killed mid-file is tests/test_hub_upload.py
(test_sigkill_mid_upload_then_restart_completes_every_file_once); this is the whole service.
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
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hub_helpers import Watch, running_hub
from sftpserver import SftpServer
from test_hub_power import HUB, Car, _files, hub_text

from fleet.mqtt import BrokerSettings, FleetClient
from fleet.upy import REPO
from hub.upload.queue import Queue
from hub.upload.transfer import CHUNK
from tests.faultproxy import FaultProxy, report


@contextlib.asynccontextmanager
async def hub_process(conf: str, settings: BrokerSettings, workdir: Path, n: int) -> AsyncIterator[
        asyncio.subprocess.Process]:
    """`fleet hub run` on `conf`; killed (the whole process group) at the end if still running."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir.parent / f"hub{n}.hjson"
    path.write_text(conf)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.cli", "hub", "run", "--config", str(path), "--broker", settings.url,
        "--home", settings.home, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.DEVNULL, stderr=(workdir.parent / f"hub{n}.log").open("w"),
        start_new_session=True)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def kill(proc: asyncio.subprocess.Process) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


def remote(server: SftpServer) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in server.root.rglob("*") if p.is_file()}


async def online(w: Watch, home: str, after: float) -> None:
    await w.wait(lambda s: s.topic == f"{home}/{HUB}/status" and s.payload == "online" and s.at > after, 20,
                 "the hub online")


@pytest.fixture
async def nas(tmp_path: Path) -> AsyncIterator[SftpServer]:
    server = await SftpServer(tmp_path / "nas", rate=4e6).start()  # 4 MB/s: a 3 MB file takes ~0.75 s
    yield server
    await server.close()


@pytest.mark.slow
async def test_hub_killed_mid_upload_loses_nothing(settings: BrokerSettings, home: str, tmp_path: Path,
                                                   nas: SftpServer) -> None:
    workdir = tmp_path / "hub"
    files = _files(workdir / "clips", 3, 3_000_000)  # added over MQTT (camera/ is scanned at start)
    conf = hub_text(workdir, nas.target_config(), camera=False)
    async with Watch(settings, f"{home}/{HUB}/#") as w:
        async with hub_process(conf, settings, workdir, 0) as proc:
            await online(w, home, 0)
            for f in files:
                await w.publish(f"{home}/{HUB}/upload/set", json.dumps({"add": str(f)}))
            while nas.received < 4_000_000:  # into the second file
                await asyncio.sleep(0.01)
            await kill(proc)
        # a camera segment closed while the hub was down: found by the scan at start
        late = workdir / "camera" / "clip.20261121T061500Z.b2.9.mp4"
        late.parent.mkdir()
        late.write_bytes(os.urandom(1_000_000))
        restarted = time.monotonic()
        async with hub_process(conf, settings, workdir, 1):
            await w.wait(lambda s: s.topic == f"{home}/{HUB}/upload/done" and s.json()["path"] == str(late), 30,
                         "the late file uploaded")
            while True:
                with Queue(workdir / "upload.db") as queue:
                    if queue.pending() == (0, 0):
                        break
                assert time.monotonic() - restarted < 30, "the queue never emptied"
                await asyncio.sleep(0.1)
            drained = time.monotonic() - restarted
    want = {f.name: f.read_bytes() for f in [*files, late]}
    assert remote(nas) == want  # each once, byte-identical, no .part left
    with Queue(workdir / "upload.db") as queue:
        assert sorted(r["verified"] for r in queue.rows()) == ["sha256"] * 4
    report("hub killed mid-upload", files=4, mb=10, drained_after_restart_s=round(drained, 2),
           bytes_sent=nas.received, bytes_of_files=sum(len(b) for b in want.values()))
    # resumed from its checkpoint: at most the chunk in flight (4 MiB: these 3 MB files whole) sent again
    assert nas.received <= sum(len(b) for b in want.values()) + CHUNK


@pytest.mark.slow
async def test_hub_killed_during_key_off_finishes_the_sequence_after_restart(
        settings: BrokerSettings, home: str, tmp_path: Path, nas: SftpServer) -> None:
    workdir = tmp_path / "hub"
    files = _files(workdir / "camera", 3, 3_000_000)
    conf = json.loads(hub_text(workdir, nas.target_config(), camera=False, deadline=60))
    async with Watch(settings, f"{home}/#") as w:
        car = Car(w, home)
        async with hub_process(json.dumps(conf), settings, workdir, 0) as proc:
            await online(w, home, 0)
            for f in files:
                await w.publish(f"{home}/{HUB}/upload/set", json.dumps({"add": str(f)}))
            await w.wait(lambda s: s.topic == f"{home}/{HUB}/upload" and s.json()["current"], 10, "uploading")
            await car.key(False)
            await w.wait(lambda s: s.topic == f"{home}/{HUB}/rules/key_off" and s.json()["event"] == "started", 15,
                         "the key-off sequence started")
            await asyncio.sleep(0.3)  # in upload.wait_empty: ~9 MB at 4 MB/s
            assert car.latch() == "1" and not (workdir / "shutdown.log").exists()
            await kill(proc)
            killed = time.monotonic()
        # The Pi is still powered (the latch relay holds it), the key still off: the hub starts again
        conf["power"]["sim_ignition"] = "OFF"
        restarted = time.monotonic()
        async with hub_process(json.dumps(conf), settings, workdir, 1):
            released = await car.released(60)
            await asyncio.sleep(0.3)  # the last reports
        events = [e for e in car.rule_events() if e.get("event") == "step"]
        done = w.on(f"{home}/{HUB}/upload/done")
    assert remote(nas) == {f.name: f.read_bytes() for f in files}
    with Queue(workdir / "upload.db") as queue:
        assert queue.pending() == (0, 0)
    # the restarted hub ran the whole sequence: uploads drained, then shutdown, then the latch
    assert [(e["action"], e["result"]) for e in events] == [
        ("upload.wait_empty", "ok"), ("power.shutdown", "ok"), ("power.release", "ok")]
    assert max(s.at for s in done) < released
    assert (workdir / "shutdown.log").read_text().count("\n") == 1  # shut down once
    assert car.power()["sequence"] == "released"
    report("hub killed during key-off", down_s=round(restarted - killed, 2),
           released_after_restart_s=round(released - restarted, 2), files=3)
    assert released - restarted < 30


KEEPALIVE = 2
PING_PONG = """
id: lf
jobs: ["rules"]
rules: { ping: { on: { topic: "{home}/ping" }, do: [ { publish: "{home}/pong", payload: "1" } ] } }
"""


async def pong(w: Watch, home: str, timeout: float = 30) -> float:
    """Ping until the hub's rule answers (a ping sent while its link is down is lost: clean session)."""
    t0 = time.monotonic()
    while True:
        n = len(w.seen)
        await w.publish(f"{home}/ping", "1")
        with contextlib.suppress(AssertionError):
            await w.wait(lambda s, n=n: s.topic == f"{home}/pong" and w.seen.index(s) >= n, 0.5, "pong")
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, "the hub never answered"


HUB_FAULTS = ["cut", "stall", "half_open up", "corrupt down"]


async def test_hub_link_faults_found_and_recovered(settings: BrokerSettings, home: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub service's MQTT link (paho under aiomqtt) through the fault proxy. Its keepalive is 30 s;
    here 2 s, as for the node, so a fault only the keepalive can find is found in seconds."""
    monkeypatch.setattr("hub.service.FleetClient", functools.partial(FleetClient, keepalive=KEEPALIVE))
    figures: dict[str, float] = {}
    with FaultProxy("127.0.0.1", settings.port) as proxy:
        async with Watch(settings, f"{home}/#") as w, running_hub(PING_PONG, BrokerSettings(proxy.url, home),
                                                                   tmp_path) as hub:
            link = hub._main
            await pong(w, home)
            for fault in HUB_FAULTS:
                kind, _, direction = fault.partition(" ")
                t0 = time.monotonic()
                if kind == "cut":
                    proxy.cut()
                elif kind == "stall":
                    proxy.stall()
                elif kind == "half_open":
                    proxy.half_open(direction)
                else:
                    proxy.corrupt(direction, 4)  # lands on the next bytes: a PINGREQ or PINGRESP at the latest
                await asyncio.wait_for(link.down.wait(), 4 * KEEPALIVE + 5)
                found = time.monotonic()
                proxy.resume()
                await asyncio.wait_for(link.connected.wait(), 15)
                back = time.monotonic()
                await pong(w, home)
                figures[fault.replace(" ", "_")] = [round(found - t0, 2), round(back - found, 2)]
            reconnects = link.reconnects
            logs = [s.payload for s in w.seen if s.topic.startswith(f"{home}/log/")]
    report("hub link faults: [found_s, back_s]", keepalive_s=KEEPALIVE, **figures)
    assert reconnects == len(HUB_FAULTS)
    # paho finds a silent link within 2 × keepalive; the reconnect backoff is 1 s; margins for a busy machine
    assert all(found < 3 * KEEPALIVE + 3 and back < 10 for found, back in figures.values())
    assert not [line for line in logs if "Traceback" in line]
