"""The camera job over a real Mosquitto: start/stop/clip/arm on `camera/set`, the retained state, the
segment announcements, `upload/done` feeding the quota, `.part` recovery at start; the job alone on
tests/hubstub.py, and once through the real hub service. The recorder is a real process encoding
real H.264 (the synthetic test pattern, 320×240, 1 s segments)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from hub_helpers import Seen, Watch, running_hub
from hubstub import StubHub, running_job
from test_hub_camera import ffprobe, fragment_written

from fleet.mqtt import BrokerSettings
from hub.camera import RecorderError
from hub.camera.segments import PART
from hub.camera.store import SIDECAR
from hub.jobs.camera import CameraJob

HUB = "car"
CONF = {"width": 320, "height": 240, "fps": 30, "segment": 1, "gop": 1, "preset": "ultrafast", "clip": 1.5}


def camera_job(settings: BrokerSettings, workdir: Path, **conf: Any) -> Any:
    return running_job(settings, HUB, workdir, CameraJob, {**CONF, **conf})


class Camera:
    """The camera's topics, as a client outside the hub sees them."""

    def __init__(self, watch: Watch, home: str) -> None:
        self.w = watch
        self.state_topic = f"{home}/{HUB}/camera"
        self.set_topic = f"{home}/{HUB}/camera/set"
        self.segment_topic = f"{home}/{HUB}/camera/segment"

    async def state(self, state: str, after: float = 0.0, timeout: float = 15.0, not_capture: str | None = None,
                    **fields: Any) -> dict[str, Any]:
        def test(s: Seen) -> bool:
            data = s.json()
            return (s.topic == self.state_topic and s.at >= after and data["state"] == state
                    and all(data.get(k) == v for k, v in fields.items())
                    and (not_capture is None or data["capture"] != not_capture))
        return (await self.w.wait(test, timeout, f"camera state {state} {fields}")).json()

    async def command(self, payload: str) -> float:
        at = asyncio.get_running_loop().time()
        await self.w.publish(self.set_topic, payload)
        return at

    def segments(self) -> list[dict[str, Any]]:
        return [s.json() for s in self.w.on(self.segment_topic)]


def check_announced(seg: dict[str, Any]) -> None:
    data = Path(seg["path"]).read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (seg["size"], seg["sha256"])
    assert ffprobe(seg["path"]) == (seg["frames"], pytest.approx(seg["duration"], abs=1e-3))


@pytest.mark.slow
async def test_start_stop_and_clip_over_mqtt(settings: BrokerSettings, home: str, tmp_path: Path) -> None:
    async with Watch(settings, f"{home}/{HUB}/camera/#", f"{home}/{HUB}/camera") as w, \
            camera_job(settings, tmp_path) as job:
        cam = Camera(w, home)
        first = await cam.state("idle")
        assert first["segments"] == 0 and first["free_bytes"] > 0
        assert job.stats() == {}  # no recorder process, no figures

        at = await cam.command("start")
        loop = await cam.state("recording", after=at, kind="loop")
        job.stats()
        await asyncio.sleep(0.3)
        figures = job.stats()  # the recorder process's own, for the stats job
        assert figures["rss"] > 10_000_000 and 0 <= figures["cpu"] < 250
        await w.wait(lambda s: s.topic == cam.segment_topic, 10, "a segment")
        at = await cam.command("stop")
        idle = await cam.state("idle", after=at)
        segs = cam.segments()
        assert segs and all(s["capture"] == loop["capture"] for s in segs)
        assert [s["seq"] for s in segs] == list(range(1, len(segs) + 1))
        assert idle["segments"] == len(segs)  # the last segment is announced before the state says idle
        # a clip: fixed length, then idle by itself
        at = await cam.command(json.dumps({"clip": 2}))
        clip = await cam.state("recording", after=at, kind="clip")
        await cam.state("idle", after=at)
        clip_segs = [s for s in cam.segments() if s["capture"] == clip["capture"]]
        assert clip["capture"].startswith("clip.")
        assert sum(s["duration"] for s in clip_segs) == pytest.approx(2.0)
        # a clip during a loop recording: the loop goes on after it, in a capture of its own
        at = await cam.command("start")
        loop2 = await cam.state("recording", after=at, kind="loop")
        at = await cam.command("clip")  # the configured length, 1.5 s
        clip2 = await cam.state("recording", after=at, kind="clip")
        loop3 = await cam.state("recording", after=at, kind="loop", not_capture=loop2["capture"])
        at = await cam.command("stop")
        await cam.state("idle", after=at)
        captures = [s["capture"] for s in cam.segments()]
        assert captures.index(loop2["capture"]) < captures.index(clip2["capture"]) < captures.index(loop3["capture"])
        clip2_frames = sum(s["frames"] for s in cam.segments() if s["capture"] == clip2["capture"])
        assert clip2_frames == 45
        # start during a clip: answered at once, and the loop follows the clip
        at = await cam.command("clip")
        clip3 = await cam.state("recording", after=at, kind="clip")
        at = await cam.command("start")
        await cam.state("recording", after=at, kind="clip", capture=clip3["capture"])
        await cam.state("recording", after=at, kind="loop")
        at = await cam.command("stop")
        await cam.state("idle", after=at)
        for seg in cam.segments():
            check_announced(seg)
        assert not list((tmp_path / "camera").glob("*" + PART))


@pytest.mark.slow
async def test_arm_follows_the_ignition_and_survives_a_restart(settings: BrokerSettings, home: str,
                                                               tmp_path: Path) -> None:
    ignition = f"{home}/{HUB}/ignition"
    async with Watch(settings, f"{home}/{HUB}/camera") as w:
        cam = Camera(w, home)
        async with camera_job(settings, tmp_path):
            await cam.state("idle")
            at = await cam.command("arm")
            await cam.state("armed", after=at, armed=True)
            at = asyncio.get_running_loop().time()
            await w.publish(ignition, "ON", retain=True)  # as the power job does
            await cam.state("recording", after=at, kind="loop")
            # malformed commands are logged and dropped; the job goes on
            for bad in ("{not json", '{"clip": "long"}', '{"clip": 99999}', "dance"):
                await cam.command(bad)
            at = asyncio.get_running_loop().time()
            await w.publish(ignition, "OFF", retain=True)
            armed = await cam.state("armed", after=at)
            assert armed["segments"] >= 1
        async with camera_job(settings, tmp_path):  # restarted: still armed, ignition is off
            at = asyncio.get_running_loop().time()
            await cam.state("armed", after=at, armed=True)
            at = await cam.command("disarm")
            await cam.state("idle", after=at, armed=False)
        await w.publish(ignition, "", retain=True)


@pytest.mark.slow
async def test_recovery_at_start_and_uploaded_segments_leave_first(settings: BrokerSettings, home: str,
                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "camera"
    async with Watch(settings, f"{home}/{HUB}/camera", f"{home}/{HUB}/camera/segment") as w:
        cam = Camera(w, home)
        async with camera_job(settings, tmp_path):
            await cam.state("idle")
            at = await cam.command("start")
            await cam.state("recording", after=at)
            await w.wait(lambda s: s.topic == cam.segment_topic and s.json()["seq"] == 3, 15, "3 segments")
            at = await cam.command("stop")
            await cam.state("idle", after=at)
        segs = cam.segments()
        # a power cut left a .part: the first 60 % of a real segment, cut mid-fragment
        data = Path(segs[0]["path"]).read_bytes()
        part = folder / Path(segs[-1]["path"]).name.replace(f".{segs[-1]['seq']:04d}.", ".0099.")
        Path(str(part) + PART).write_bytes(data[: len(data) * 6 // 10])
        # quota: less than one segment, so every uploaded segment must go and no other
        async with camera_job(settings, tmp_path, quota=1000, hard_limit="1G"):
            recovered = await w.wait(lambda s: s.topic == cam.segment_topic and s.json().get("recovered"), 10)
            assert recovered.json()["path"] == str(part) and recovered.json()["seq"] == 99
            check_announced(recovered.json())
            assert not list(folder.glob("*" + PART))
            await cam.state("idle", after=recovered.at)  # this job's first state: it listens now
            done = f"{home}/{HUB}/upload/done"
            await w.publish(done, "not json")
            await w.publish(done, json.dumps({"size": 3}))
            await w.publish(done, json.dumps({"path": segs[1]["path"], "target": "nas", "size": segs[1]["size"],
                                              "verified": "sha256"}))
            await w.publish(done, json.dumps({"path": "/somewhere/else.mp4", "target": "nas"}))
            sidecar = folder / SIDECAR

            def settled() -> bool:  # deleted, and then forgotten in the sidecar
                return not Path(segs[1]["path"]).exists() and json.loads(sidecar.read_text()) == {"uploaded": []}

            for _ in range(200):
                if sidecar.exists() and settled():
                    break
                await asyncio.sleep(0.05)
            assert settled()  # uploaded, over quota: deleted, and forgotten with its file
            assert all(Path(s["path"]).exists() for s in segs if s is not segs[1])  # not uploaded: kept


@pytest.mark.slow
async def test_through_the_hub_service(settings: BrokerSettings, home: str, tmp_path: Path) -> None:
    text = """{
  id: car
  jobs: ["camera"]
  local_broker: { enabled: false }
  camera: {
    width: 320
    height: 240
    segment: 1
    gop: 1
    preset: ultrafast
    quota: "1G"
    hard_limit: "2G"
  }
}"""
    async with Watch(settings, f"{home}/{HUB}/camera", f"{home}/{HUB}/camera/segment", f"{home}/{HUB}/jobs",
                     f"homeassistant/+/{HUB}/+/config") as w:
        cam = Camera(w, home)
        async with running_hub(text, settings, tmp_path):
            await cam.state("idle")
            # homeassistant/… is shared by every test's hub "car": find ours by its topics
            switch = await w.wait(lambda s: s.topic == f"homeassistant/switch/{HUB}/camera/config"
                                  and s.json()["command_topic"] == cam.set_topic, 5, "HA switch")
            assert (switch.json()["payload_on"], switch.json()["state_on"]) == ("start", "ON")
            at = await cam.command(json.dumps({"clip": 1}))
            await cam.state("recording", after=at, kind="clip")
            await cam.state("idle", after=at)
            (seg,) = cam.segments()
            check_announced(seg)
            assert Path(seg["path"]).parent == tmp_path / "camera" and seg["frames"] == 30
            jobs = [s.json() for s in w.on(f"{home}/{HUB}/jobs")]
            assert jobs[-1]["camera"]["state"] == "running"
    shutil.rmtree(tmp_path / "camera")


@pytest.mark.slow
async def test_a_killed_recorder_ends_the_run_and_the_restart_cleans_up(settings: BrokerSettings, home: str,
                                                                        tmp_path: Path) -> None:
    folder = tmp_path / "camera"
    async with Watch(settings, f"{home}/{HUB}/camera", f"{home}/{HUB}/camera/segment") as w:
        cam = Camera(w, home)
        async with StubHub(settings, HUB, tmp_path) as hub:
            job = CameraJob(hub, {**CONF, "segment": 2})
            # Started here; ends by itself when its recorder is killed.
            run = asyncio.create_task(job.run(), name="test-camera-job")
            await cam.state("idle")
            at = await cam.command("start")
            await cam.state("recording", after=at)
            await w.wait(lambda s: s.topic == cam.segment_topic, 10, "a segment")
            await fragment_written(folder)
            assert job.recorder is not None and job.recorder.pid is not None
            os.kill(job.recorder.pid, signal.SIGKILL)  # as the OOM killer would
            with pytest.raises(RecorderError) as failed:
                await asyncio.wait_for(run, 10)
            assert failed.value.returncode == -signal.SIGKILL
        closed = cam.segments()
        assert len(list(folder.glob("*" + PART))) == 1  # only the open segment
        for seg in closed:
            check_announced(seg)
        async with running_job(settings, HUB, tmp_path, CameraJob, CONF):  # what the service's restart does
            recovered = await w.wait(lambda s: s.topic == cam.segment_topic and s.json().get("recovered"), 10)
            check_announced(recovered.json())
            assert recovered.json()["seq"] == closed[-1]["seq"] + 1
            assert not list(folder.glob("*" + PART))


async def test_a_recorder_that_cannot_open_its_camera_fails_the_run(settings: BrokerSettings, home: str,
                                                                    tmp_path: Path) -> None:
    async with Watch(settings, f"{home}/{HUB}/camera") as w, StubHub(settings, HUB, tmp_path) as hub:
        cam = Camera(w, home)
        job = CameraJob(hub, {**CONF, "source": str(tmp_path / "video9")})
        # Started here; ends by itself when the recorder fails.
        run = asyncio.create_task(job.run(), name="test-camera-job")
        await cam.state("idle")
        at = await cam.command("start")
        with pytest.raises(RecorderError, match="video9"):
            await asyncio.wait_for(run, 15)
        await cam.state("idle", after=at)  # said before the run ended
        job = CameraJob(hub, {**CONF, "backend": "picamera2"})
        with pytest.raises(ImportError, match="picamera2"):  # not on this machine: said at once
            await job.run()
