"""Key-off → latch release, through the real hub service over a real Mosquitto: the power job (gpiozero
MockFactory pins, driven on `_sim` topics), the rules job running the key-off rule, the upload job
against a real asyncssh SFTP server, and (first test) the real camera job recording the synthetic test
pattern. The OS shutdown command is a harmless `sh -c` that writes a file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hub_helpers import Watch, running_hub
from sftpserver import sftp_servers  # noqa: F401 (the sftp fixture)

from fleet.mqtt import BrokerSettings
from hub.upload.queue import Queue
from hub.upload.transfer import sha256_of

HUB = "car"
IGNITION, LATCH = 17, 27
KEY_OFF_RULE = {  # as in examples/hub.hjson
    "on": "power.ignition_off", "cancel": "power.ignition_on", "mode": "serial",
    "do": ["camera.stop", "upload.wait_empty", "power.shutdown", "power.release"],
}


def hub_text(workdir: Path, target: dict[str, Any], *, camera: bool = True, deadline: float = 60,
             rule: dict[str, Any] | None = None) -> str:
    rule = rule or KEY_OFF_RULE
    if not camera:
        rule = {**rule, "do": [s for s in rule["do"] if not str(s).startswith("camera.")]}
    conf: dict[str, Any] = {
        "id": HUB, "workdir": str(workdir),
        "jobs": [*(["camera"] if camera else []), "upload", "power", "rules"],
        "upload": {"targets": {"nas": target}, "retry": {"first": 0.3, "max": 1}, "progress": 0.2},
        "power": {"ignition_pin": IGNITION, "latch_pin": LATCH, "debounce": 0.3, "deadline": deadline,
                  "pin_factory": "mock", "sim_ignition": "ON",
                  "shutdown": ["sh", "-c", f"date +%s.%N >> {workdir}/shutdown.log"]},
        "rules": {"key_off": rule},
    }
    if camera:
        conf["camera"] = {"width": 160, "height": 120, "fps": 15, "segment": 1, "gop": 1, "preset": "ultrafast",
                          "armed": True}
    return json.dumps(conf)


class Car:
    """The hub's power topics as a test bench sees them."""

    def __init__(self, w: Watch, home: str) -> None:
        self.w, self.home = w, home
        self.latch_level = f"{home}/_sim/{HUB}/pin{LATCH}/level"

    async def key(self, on: bool) -> None:
        # the power job is subscribed to its pin once it has published the ignition; the rules job to the
        # ignition a moment after it reports running
        await self.w.wait(lambda s: s.topic == f"{self.home}/{HUB}/ignition", 20, "the ignition state")
        await self.w.wait(lambda s: s.topic == f"{self.home}/{HUB}/jobs"
                          and s.json()["rules"]["state"] == "running", 20, "the rules job running")
        await asyncio.sleep(0.3)
        await self.w.publish(f"{self.home}/_sim/{HUB}/pin{IGNITION}/set", "1" if on else "0")

    async def released(self, timeout: float) -> float:
        seen = await self.w.wait(lambda s: s.topic == self.latch_level and s.payload == "0", timeout,
                                 "the latch released")
        return seen.at

    def latch(self) -> str | None:
        levels = self.w.on(self.latch_level)
        return levels[-1].payload if levels else None

    def power(self) -> dict[str, Any]:
        return self.w.on(f"{self.home}/{HUB}/power")[-1].json()

    def rule_events(self) -> list[dict[str, Any]]:
        return [s.json() for s in self.w.on(f"{self.home}/{HUB}/rules/key_off")]


@pytest.mark.slow
async def test_key_off_stops_recording_uploads_then_releases(settings: BrokerSettings, home: str, tmp_path: Path,
                                                             sftp) -> None:
    server = await sftp()
    workdir = tmp_path / "hub"
    async with Watch(settings, f"{home}/#") as w, running_hub(hub_text(workdir, server.target_config()),
                                                                 settings, workdir):
        car = Car(w, home)
        await w.wait(lambda s: s.topic == f"{home}/{HUB}/camera" and s.json()["state"] == "recording", 20,
                     "recording with the key on")
        await w.wait(lambda s: s.topic == f"{home}/{HUB}/camera/segment", 20, "a first segment")
        assert car.latch() == "1"
        await car.key(False)
        released = await car.released(60)
        await asyncio.sleep(0.3)  # the last reports
        segments = [s.json() for s in w.on(f"{home}/{HUB}/camera/segment")]
        done = [s.json() for s in w.on(f"{home}/{HUB}/upload/done")]
        events = car.rule_events()
    assert w.on(f"{home}/{HUB}/ignition")[-1].payload == "OFF"
    assert car.power()["sequence"] == "released"
    # the recording stopped, every segment it made is on the server, byte-identical, verified by hash
    assert len(segments) >= 2
    for seg in segments:
        remote = server.root / HUB / Path(seg["path"]).name
        assert remote.read_bytes() == Path(seg["path"]).read_bytes()
    assert {d["path"] for d in done} == {s["path"] for s in segments}
    assert all(d["verified"] == {"nas": "sha256"} for d in done)
    assert not list(server.root.rglob("*.part"))
    # the rule ran its four steps in order, all ok; the latch went only after the last verified upload
    steps = [e for e in events if e["event"] == "step"]
    assert [(e["action"], e["result"]) for e in steps] == [
        ("camera.stop", "ok"), ("upload.wait_empty", "ok"), ("power.shutdown", "ok"), ("power.release", "ok")]
    last_done = max(s.at for s in w.on(f"{home}/{HUB}/upload/done"))
    assert last_done < released
    assert (workdir / "shutdown.log").exists()
    with Queue(workdir / "upload.db") as queue:
        assert queue.pending() == (0, 0)


async def test_unreachable_target_keeps_files_and_releases_after_sync(settings: BrokerSettings, home: str,
                                                                      tmp_path: Path, sftp) -> None:
    server = await sftp()
    target = {**server.target_config(), "timeout": 2}
    await server.close()  # the NAS is not there
    workdir = tmp_path / "hub"
    files = _files(workdir / "camera", 3, 200_000)
    async with Watch(settings, f"{home}/#") as w, running_hub(
            hub_text(workdir, target, camera=False, deadline=60), settings, workdir):
        car = Car(w, home)
        for f in files:
            await w.publish(f"{home}/{HUB}/upload/set", json.dumps({"add": str(f)}))
        await w.wait(lambda s: s.topic == f"{home}/{HUB}/upload" and s.json()["queued"] == 3, 10, "3 queued")
        t0 = time.monotonic()
        await car.key(False)
        released = await car.released(20)
        await asyncio.sleep(0.2)
    assert released - t0 < 10  # not the 60 s deadline: released after stop and sync
    assert [s.payload for s in w.on(f"{home}/{HUB}/upload/empty")] == ["unreachable"]
    assert all(f.exists() for f in files)
    with Queue(workdir / "upload.db") as queue:
        assert queue.pending() == (3, 600_000)


@pytest.mark.slow
async def test_hard_deadline_releases_while_an_upload_runs(settings: BrokerSettings, home: str, tmp_path: Path,
                                                           sftp) -> None:
    server = await sftp(rate=2e6)  # 2 MB/s: 20 MB of backlog takes ~10 s
    workdir = tmp_path / "hub"
    files = _files(workdir / "camera", 2, 10_000_000)
    async with Watch(settings, f"{home}/#") as w, running_hub(
            hub_text(workdir, server.target_config(), camera=False, deadline=3), settings, workdir) as hub:
        car = Car(w, home)
        upload_job: Any = hub.job("upload")
        for f in files:
            upload_job.uploader.add(f, f.stat().st_size, sha256_of(f))
        await w.wait(lambda s: s.topic == f"{home}/{HUB}/upload" and s.json()["current"], 10, "an upload running")
        t0 = time.monotonic()
        await car.key(False)
        released = await car.released(15)
        still = upload_job.uploader.status()
        await asyncio.sleep(0.3)
        events = car.rule_events()
    assert 3 <= released - t0 < 8  # debounce + deadline, with margin for a loaded machine
    assert still["current"] is not None and still["queued"] >= 1  # the upload was still going
    assert car.power()["sequence"] == "released"
    assert not any(e.get("action") == "power.release" for e in events)  # the deadline did it, not the rule


async def test_key_on_during_the_sequence_cancels_it(settings: BrokerSettings, home: str, tmp_path: Path,
                                                    sftp) -> None:
    server = await sftp(rate=2e6)
    workdir = tmp_path / "hub"
    files = _files(workdir / "camera", 1, 8_000_000)
    async with Watch(settings, f"{home}/#") as w, running_hub(
            hub_text(workdir, server.target_config(), camera=False, deadline=4), settings, workdir):
        car = Car(w, home)
        await w.publish(f"{home}/{HUB}/upload/set", json.dumps({"add": str(files[0])}))
        await w.wait(lambda s: s.topic == f"{home}/{HUB}/upload" and s.json()["current"], 10, "an upload running")
        await car.key(False)
        await w.wait(lambda s: s.topic == f"{home}/{HUB}/rules/key_off" and s.json()["event"] == "started", 10,
                     "the key-off rule started")
        await car.key(True)
        await w.wait(lambda s: s.topic == f"{home}/{HUB}/rules/key_off" and s.json()["event"] == "cancelled", 10,
                     "the key-off rule cancelled")
        # past the deadline the sequence would have had: the latch holds
        await asyncio.sleep(5)
        # a release asked for while the key is on is refused
        await w.publish(f"{home}/{HUB}/power/set", "release")
        await w.wait(lambda s: s.topic == f"{home}/{HUB}/power/released", 5, "the answer to release")
    assert [s.payload for s in w.on(f"{home}/_sim/{HUB}/pin{LATCH}/level")] == ["1"] * len(
        w.on(f"{home}/_sim/{HUB}/pin{LATCH}/level"))
    assert car.power()["sequence"] == "cancelled" and car.power()["latch"] == "ON"
    assert w.on(f"{home}/{HUB}/power/released")[-1].payload == "refused"
    assert w.on(f"{home}/{HUB}/ignition")[-1].payload == "ON"


def _files(folder: Path, n: int, size: int) -> list[Path]:
    import os

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"clip.20261121T0600{i:02d}Z.b2.{i}.mp4"
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out
