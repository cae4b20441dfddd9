"""The dashcam's recording side: real H.264 from PyAV/libx264, read back with PyAV and ffprobe; a real
recorder process killed with SIGKILL; the picamera2 backend's code path with a stand-in module
(picamera2 needs libcamera, which exists only on a Pi); loop-recording quota; hub.hjson checks."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from fleet.hjsonpos import loads
from hub.camera import Settings, parse_size
from hub.camera.pyav import TestPattern as Pattern
from hub.camera.recorder import Recorder, Session, open_backend
from hub.camera.segments import PART, Segment, SegmentWriter, boot_id, recover
from hub.camera.store import SIDECAR, SegmentStore
from hub.jobs.camera import CameraJob

NAME = re.compile(r"(loop|clip)\.\d{8}T\d{6}Z\.[0-9a-f]{8}\.\d{4}\.mp4")
SMALL = {"width": 320, "height": 240, "fps": 30, "segment": 1.0, "gop": 1.0}


def record(settings: Settings, mode: str = "clip", clip: float = 3.5) -> tuple[list[Segment], Session]:
    """One recording in this process, as the recorder process runs it."""
    closed: list[Segment] = []
    writer = SegmentWriter(settings, closed.append)
    session = Session(writer, lambda event: None, mode, clip)
    open_backend(settings).run(writer, session.tick)
    writer.close()
    return closed, session


def ffprobe(path: str | Path) -> tuple[int, float]:
    """(video packets, container duration in seconds) as ffprobe reads them."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-show_entries",
                          "stream=nb_read_packets:format=duration", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    return int(data["streams"][0]["nb_read_packets"]), float(data["format"]["duration"])


def decoded(path: str | Path) -> list[Any]:
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


def check_segment(seg: Segment) -> None:
    """The segment on disk is what its announcement says: frames, duration, size, sha256, a keyframe first."""
    data = Path(seg.path).read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (seg.size, seg.sha256)
    frames = decoded(seg.path)
    assert len(frames) == seg.frames
    assert frames[0].key_frame
    assert ffprobe(seg.path) == (seg.frames, pytest.approx(seg.duration, abs=1e-3))


async def fragment_written(folder: Path, timeout: float = 20.0) -> None:
    """Until the open segment's `.part` holds a fragment (the muxer writes nothing before its first), and
    a moment more for the write to finish."""
    async with asyncio.timeout(timeout):
        while not any(p.stat().st_size for p in folder.glob("*" + PART)):
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)


def test_pyav_segments_read_back_with_every_frame(tmp_path: Path) -> None:
    # veryfast uses B-frames: packets come out of order, and the split must still be exact.
    settings = Settings(str(tmp_path), **SMALL, preset="veryfast", realtime=False)
    closed, session = record(settings, clip=3.5)
    assert [s.seq for s in closed] == [1, 2, 3, 4]
    assert [s.frames for s in closed] == [30, 30, 30, 15]
    assert [s.duration for s in closed] == [1.0, 1.0, 1.0, 0.5]
    assert sum(s.frames for s in closed) == session.frames == 105  # no frame dropped at a split
    # the next segment starts exactly at the next frame: starts are contiguous in the capture's time
    for a, b in itertools.pairwise(closed):
        assert b.start == pytest.approx(a.start + a.duration)
    boot = boot_id()
    for seg in closed:
        name = Path(seg.path).name
        assert NAME.fullmatch(name) and f".{boot}." in name and name.startswith("clip.")
        assert seg.capture == name.rsplit(".", 2)[0]
        check_segment(seg)
    assert not list(tmp_path.glob("*" + PART))


def test_test_pattern_moves_and_is_stamped() -> None:
    pattern = Pattern(320, 240, 30)
    a, b = pattern.frame(0, 0.0), pattern.frame(1, 0.0)
    assert bytes(a.planes[0]) != bytes(b.planes[0])  # it moves
    c = pattern.frame(0, 3600.0)
    rows = slice(0, 320 * 20)
    assert bytes(a.planes[0])[rows] != bytes(c.planes[0])[rows]  # the time is burnt in at the top


@pytest.mark.slow
async def test_sigkill_leaves_closed_segments_playable_and_the_open_one_recoverable(tmp_path: Path) -> None:
    settings = Settings(str(tmp_path), **{**SMALL, "segment": 2.0}, preset="ultrafast", sync=0.2)
    recorder = Recorder(settings, logging.getLogger("test.camera"))
    await recorder.start("loop")
    closed: list[Segment] = []

    async def follow() -> None:
        async for event in recorder.events():
            if event.pop("event") == "segment":
                closed.append(Segment(**event))

    follower = asyncio.create_task(follow(), name="test-camera-follow")
    try:
        async with asyncio.timeout(30):
            while len(closed) < 2:
                await asyncio.sleep(0.05)
        await fragment_written(tmp_path)  # the third segment's first fragment is on disk
        assert recorder.pid is not None
        os.kill(recorder.pid, signal.SIGKILL)
        with pytest.raises(Exception, match="-9"):
            await follower
    finally:
        recorder.kill()
    for seg in closed:
        check_segment(seg)
    parts = list(tmp_path.glob("*" + PART))
    assert len(parts) == 1 and parts[0].name == Path(closed[-1].path).name.replace(".0002.", ".0003.") + PART

    recovered = recover(tmp_path)
    assert not list(tmp_path.glob("*" + PART)) and len(recovered) == 1
    seg = recovered[0]
    assert seg.recovered and seg.seq == 3 and Path(seg.path).exists()
    assert 1 <= seg.frames < 60  # the complete packets of the first fragment(s)
    assert seg.start == pytest.approx(4.0)
    check_segment(seg)


def test_a_part_without_a_complete_frame_is_deleted(tmp_path: Path) -> None:
    settings = Settings(str(tmp_path / "rec"), **SMALL, preset="ultrafast", realtime=False)
    closed, _ = record(settings, clip=1.0)
    part = tmp_path / (Path(closed[0].path).name.replace(".0001.", ".0002.") + PART)
    part.write_bytes(Path(closed[0].path).read_bytes()[:900])  # the header, no complete fragment
    (tmp_path / "x.mp4.recovering").write_bytes(b"left by a crash during recovery")
    assert recover(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]


# -- picamera2, with a stand-in module --------------------------------------------------------------

class _StandInEncoder:
    def __init__(self, bitrate: int | None = None, repeat: bool = False, iperiod: int | None = None) -> None:
        self.bitrate, self.repeat, self.iperiod = bitrate, repeat, iperiod


class _StandInOutput:
    def __init__(self) -> None:
        self.recording = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False


class _StandInPicamera2:
    """Plays Picamera2 + the Pi's H.264 encoder: real H.264 from libx264 (Annex B, headers repeated,
    a keyframe every `iperiod` frames, no B-frames), handed to the output from the encoder's own
    thread with microsecond sensor timestamps, as picamera2 does."""

    instances: list[_StandInPicamera2] = []  # noqa: RUF012  # the test reads what the backend asked for

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _StandInPicamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any], controls: dict[str, Any]) -> dict[str, Any]:
        return {"main": main, "controls": controls}

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config

    def start_recording(self, encoder: _StandInEncoder, output: _StandInOutput) -> None:
        self.encoder = encoder
        output.start()
        # Started here, ends in stop_recording: the stand-in's "encoder thread".
        self._thread = threading.Thread(target=self._encode, args=(encoder, output), name="standin-encoder")
        self._thread.start()

    def _encode(self, encoder: _StandInEncoder, output: _StandInOutput) -> None:
        w, h = self.config["main"]["size"]
        fps = self.config["controls"]["FrameRate"]
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height, enc.pix_fmt, enc.time_base = w, h, "yuv420p", Fraction(1, fps)
        enc.gop_size = encoder.iperiod or 30
        enc.options = {"preset": "ultrafast", "tune": "zerolatency", "keyint_min": str(enc.gop_size)}
        enc.open()
        pattern = Pattern(w, h, fps, realtime=False)
        base_us = 7_000_000_000  # sensor timestamps start anywhere
        i = 0
        while not self._stop.is_set():
            frame = pattern.frame(i, time.time())
            frame.pts = i
            for packet in enc.encode(frame):
                output.outputframe(bytes(packet), packet.is_keyframe, base_us + packet.pts * 1_000_000 // fps)
            i += 1
            time.sleep(0.002)

    def stop_recording(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def picamera2_standin(monkeypatch: pytest.MonkeyPatch) -> type[_StandInPicamera2]:
    root = types.ModuleType("picamera2")
    encoders = types.ModuleType("picamera2.encoders")
    outputs = types.ModuleType("picamera2.outputs")
    root.Picamera2 = _StandInPicamera2  # type: ignore[attr-defined]
    encoders.H264Encoder = _StandInEncoder  # type: ignore[attr-defined]
    outputs.Output = _StandInOutput  # type: ignore[attr-defined]
    for name, module in (("picamera2", root), ("picamera2.encoders", encoders), ("picamera2.outputs", outputs)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "hub.camera.picamera2", raising=False)
    _StandInPicamera2.instances.clear()
    return _StandInPicamera2


def test_picamera2_backend_with_a_stand_in_module(tmp_path: Path, picamera2_standin: Any) -> None:
    settings = Settings(str(tmp_path), **SMALL, backend="picamera2", bitrate=2_000_000)
    closed, session = record(settings, clip=2.0)
    cam = picamera2_standin.instances[0]
    assert cam.config == {"main": {"size": (320, 240)}, "controls": {"FrameRate": 30}}
    assert (cam.encoder.bitrate, cam.encoder.repeat, cam.encoder.iperiod) == (2_000_000, True, 30)
    assert cam.closed
    assert [s.frames for s in closed] == [30, 30] and session.frames == 60
    for seg in closed:
        check_segment(seg)


def test_picamera2_is_imported_only_when_chosen() -> None:
    code = ("import sys; from hub.camera.recorder import open_backend; from hub.camera import Settings; "
            "open_backend(Settings('/tmp', realtime=False)); print('picamera2' in sys.modules, "
            "'hub.camera.picamera2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- loop recording quota ---------------------------------------------------------------------------

def _fake_segments(folder: Path, n: int, first: int = 0) -> list[Path]:
    """Files named like segments, 1,000 bytes each, oldest first (the store only looks at names, sizes
    and ages; real segments are tested above)."""
    paths = []
    for i in range(first, first + n):
        p = folder / f"loop.20261121T050000Z.d8f2e339.{i + 1:04d}.mp4"
        p.write_bytes(b"\0" * 1000)
        os.utime(p, ns=(1_700_000_000_000_000_000 + i * 10**9,) * 2)
        paths.append(p)
    return paths


def test_quota_deletes_only_uploaded_segments_until_the_hard_limit(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.camera.store")
    store = SegmentStore(tmp_path, quota=3500, hard_limit=5500, log=log)
    segs = _fake_segments(tmp_path, 6)
    assert store.mark_uploaded(str(segs[1])) and store.mark_uploaded(str(segs[3]))
    assert not store.mark_uploaded(str(tmp_path / "elsewhere" / segs[2].name))  # not in our folder
    assert not store.mark_uploaded("/etc/passwd")
    # 6,000 bytes > quota: only the two uploaded go, though the folder stays over its quota
    deleted = store.enforce()
    assert [(d.path, d.uploaded) for d in deleted] == [(segs[1], True), (segs[3], True)]
    assert store.used() == 4000
    assert json.loads((tmp_path / SIDECAR).read_text()) == {"uploaded": []}
    # within the hard limit, nothing not uploaded is ever deleted
    assert store.enforce() == []
    # past the hard limit the oldest not-uploaded segment goes, and it is logged as an error
    more = _fake_segments(tmp_path, 3, first=6)
    store.mark_uploaded(str(more[1]))
    with caplog.at_level(logging.ERROR, logger="test.camera.store"):
        deleted = store.enforce()
    assert [(d.path, d.uploaded) for d in deleted] == [(more[1], True), (segs[0], False)]
    assert store.used() == 5000
    assert segs[0].name in caplog.text and "before it was uploaded" in caplog.text


def test_uploaded_knowledge_survives_a_restart(tmp_path: Path) -> None:
    log = logging.getLogger("test.camera.store")
    segs = _fake_segments(tmp_path, 3)
    SegmentStore(tmp_path, 10_000, 10_000, log).mark_uploaded(str(segs[0]))
    again = SegmentStore(tmp_path, quota=2000, hard_limit=10_000, log=log)
    assert again.uploaded == {segs[0].name}
    assert [d.path for d in again.enforce()] == [segs[0]]


# -- hub.hjson ---------------------------------------------------------------------------------------

def test_check_names_file_line_and_key() -> None:
    text = """{
  jobs: {
    camera: {
      backend: picam
      fps: 0
      quotaa: 8G
      hard_limit: 1G
      width: 321
    }
  }
}
"""
    doc = loads(text, "hub.hjson")
    issues = [str(i) for i in CameraJob.check(doc, ("jobs", "camera"))]
    assert "hub.hjson:4:7: jobs.camera.backend: must be one of pyav, picamera2, not 'picam'" in issues
    assert any(i.startswith("hub.hjson:5:7: jobs.camera.fps: must be a whole number") for i in issues)
    assert "hub.hjson:6:7: jobs.camera.quotaa: unknown key (did you mean quota?)" in issues
    pi = loads('{camera: {backend: "picamera2", segment: 10, gop: 3, quota: "1G", hard_limit: "512M"}}', "h")
    assert [str(i) for i in CameraJob.check(pi, ("camera",))] == [
        "h:1:67: camera.hard_limit: must be at least the quota",
        "h:1:33: camera.segment: with picamera2 it must be a multiple of gop: the hardware encoder makes "
        "keyframes only every gop seconds",
    ]
    assert CameraJob.check(loads('{camera: {segment: 10, quota: "2G", hard_limit: "3G"}}'), ("camera",)) == []
    assert CameraJob.check(loads('{id: "car"}'), ("camera",)) == []  # no section: the defaults


def test_parse_size() -> None:
    assert parse_size("8G") == 8 << 30 and parse_size("500MB") == 500 << 20 and parse_size(1234) == 1234
    with pytest.raises(ValueError):
        parse_size("lots")
