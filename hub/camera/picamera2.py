"""The picamera2 backend: a Pi camera module through Picamera2 and the Pi's hardware H.264 encoder.

Imported only when `hub.hjson` chooses it (picamera2 needs libcamera, which exists only on a Pi).
Like picamera2's own SplittableOutput, it splits at keyframes without dropping a frame; our Output
feeds the same segment writer as the PyAV backend, so the `.part`/fsync/rename rules are the same. The
hardware encoder cannot be asked for a keyframe on demand, so its intra period is the `gop` setting:
keep the segment length a multiple of it and every segment has its exact length.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import av
from picamera2 import Picamera2
from picamera2.encoders import H264Encoder
from picamera2.outputs import Output

from hub.camera import Settings
from hub.camera.segments import TICKS, SegmentWriter

_Encoded = tuple[bytes, bool, int]  # (Annex B access unit, keyframe, sensor timestamp in µs)


class _ToQueue(Output):  # type: ignore[misc]  # picamera2 has no type information
    """Hands each encoded frame from the encoder's thread to the recording thread."""

    def __init__(self, frames: queue.Queue[_Encoded]) -> None:
        super().__init__()
        self.frames = frames

    def outputframe(self, frame: Any, keyframe: bool = True, timestamp: int | None = None,
                    packet: Any = None, audio: bool = False) -> None:
        if audio:
            return
        self.frames.put((bytes(frame), bool(keyframe), int(timestamp if timestamp is not None else
                                                          time.monotonic_ns() // 1000)))


class Picamera2Backend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, writer: SegmentWriter, tick: Callable[[int], bool]) -> None:
        """Record until `tick(pts)`, called before each frame is written, returns False."""
        s = self.settings
        frames: queue.Queue[_Encoded] = queue.Queue()
        camera = Picamera2()
        try:
            camera.configure(camera.create_video_configuration(
                main={"size": (s.width, s.height)}, controls={"FrameRate": s.fps}))
            encoder = H264Encoder(bitrate=s.bitrate, repeat=True, iperiod=max(1, round(s.gop * s.fps)))
            camera.start_recording(encoder, _ToQueue(frames))
            try:
                self._write(frames, writer, tick)
            finally:
                camera.stop_recording()
        finally:
            camera.close()

    def _write(self, frames: queue.Queue[_Encoded], writer: SegmentWriter, tick: Callable[[int], bool]) -> None:
        first: int | None = None
        wall0 = 0.0
        while True:
            try:
                data, keyframe, micros = frames.get(timeout=5.0)
            except queue.Empty:
                raise TimeoutError("picamera2 delivered no frame for 5 s") from None
            if first is None:
                first, wall0 = micros, time.time()
            pts = (micros - first) * TICKS // 1_000_000
            if not tick(pts):
                return
            packet = av.Packet(data)
            packet.pts = packet.dts = pts  # the Pi's encoder makes no B-frames: decode order is display order
            packet.is_keyframe = keyframe
            writer.write(packet, wall0 + pts / TICKS)
