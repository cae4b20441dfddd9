"""Dashcam figures: real-time factor of the PyAV backend, CPU per recorded minute, gap at each split.

    .venv/bin/python bench/hub_camera.py [--seconds 10] [--paced 20]

1. Real-time factor: the synthetic test pattern encoded as fast as it goes (no pacing) into 2 s
   segments, for 1280x720 and 640x480 at 30 fps, per libx264 preset; video seconds per wall second
   (above 1: keeps up with a camera), with the CPU seconds it took.
2. CPU per recorded minute: the real recorder process, paced like a camera, for `--paced` seconds;
   its CPU time (user + system, from the kernel) scaled to a minute of recording.
3. Gap at a split, from the files alone: each segment's start (in its metadata) plus its decoded frame
   timestamps; the gap is the time between the last frame of one segment and the first of the next,
   minus one frame interval (0 = no frame lost), and the frames written versus the frames captured.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

import av

from hub.camera import Settings
from hub.camera.recorder import Recorder, Session, open_backend
from hub.camera.segments import Segment, SegmentWriter


def gaps(segments: list[Segment], fps: int) -> tuple[float, int]:
    """(largest gap in ms between consecutive segments beyond one frame interval, frames decoded)."""
    spans = []
    frames = 0
    for seg in segments:
        with av.open(seg.path) as c:
            start = float(json.loads(c.metadata["comment"])["start"])
            times = [f.time for f in c.decode(video=0)]
        frames += len(times)
        spans.append((start + min(times), start + max(times)))
    worst = 0.0
    for (_, last), (first, _) in itertools.pairwise(spans):
        worst = max(worst, abs(first - last - 1 / fps))
    return worst * 1000, frames


def unpaced(width: int, height: int, preset: str, seconds: float, folder: Path) -> None:
    settings = Settings(str(folder), width=width, height=height, fps=30, segment=2.0, preset=preset,
                        realtime=False)
    closed: list[Segment] = []
    writer = SegmentWriter(settings, closed.append)
    session = Session(writer, lambda event: None, "clip", seconds)
    wall, cpu = time.perf_counter(), time.process_time()
    open_backend(settings).run(writer, session.tick)
    writer.close()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gap_ms, frames = gaps(closed, 30)
    size = sum(s.size for s in closed)
    print(f"{width}x{height}@30 {preset:9s} real-time factor {seconds / wall:5.2f}  "
          f"({seconds:.0f} s of video in {wall:5.2f} s, {cpu:5.2f} CPU-s)  {len(closed)} segments, "
          f"{size * 8 / seconds / 1e6:4.1f} Mbit/s, frames {frames}/{session.frames}, largest gap {gap_ms:.3f} ms")
    for seg in closed:
        Path(seg.path).unlink()


async def paced(width: int, height: int, preset: str, seconds: float, folder: Path) -> None:
    settings = Settings(str(folder), width=width, height=height, fps=30, segment=5.0, preset=preset)
    recorder = Recorder(settings, logging.getLogger("bench"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    await recorder.start("clip", seconds)
    closed: list[Segment] = []
    frames_captured = 0
    async for event in recorder.events():
        kind = event.pop("event")
        if kind == "segment":
            closed.append(Segment(**event))
        elif kind == "stopped":
            frames_captured = event["frames"]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    gap_ms, frames = gaps(closed, 30)
    print(f"{width}x{height}@30 {preset:9s} paced {seconds:.0f} s: {cpu / seconds * 60:5.1f} CPU-s per recorded "
          f"minute ({cpu / seconds * 100:4.0f} % of a core), frames {frames}/{frames_captured}, "
          f"largest gap {gap_ms:.3f} ms over {len(closed) - 1} splits")
    for seg in closed:
        Path(seg.path).unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="video seconds per unpaced run")
    parser.add_argument("--paced", type=float, default=20.0, help="seconds of each paced recording")
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {load} (the machine is shared: wall-clock figures depend on it)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("-- real-time factor (unpaced, 2 s segments)")
        for width, height in ((1280, 720), (640, 480)):
            for preset in ("ultrafast", "veryfast"):
                unpaced(width, height, preset, args.seconds, folder)
        print("-- CPU per recorded minute (the recorder process, paced like a camera, 5 s segments)")
        for width, height in ((1280, 720), (640, 480)):
            asyncio.run(paced(width, height, "veryfast", args.paced, folder))


if __name__ == "__main__":
    main()
