"""The PyAV backend: a V4L2/USB camera or the synthetic test pattern, encoded with libx264.

Runs inside the recorder process. It asks the segment writer before each frame whether a segment
boundary (or a new capture) is due and then forces that frame to be a keyframe, so a split never
waits and never drops a frame: the next segment starts exactly at the next frame.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any, ClassVar

import av
from av.video.frame import PictureType

from hub.camera import TESTSRC, Settings
from hub.camera.segments import TICKS, SegmentWriter

Frames = Iterator[tuple[Any, int, float]]  # (yuv420p VideoFrame, pts in TICKS from the first frame, Unix time)


class TestPattern:
    """A moving diagonal gradient with slowly cycling colours, and burnt into it the UTC time of the
    frame and its number: what a camera shows, made on any machine. Built from bytes (no numpy)."""

    # 5×7 glyphs: seven rows of five columns each.
    FONT: ClassVar[dict[str, tuple[str, ...]]] = {
        "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
        "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
        "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
        "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
        "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
        "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
        "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
        "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
        "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
        "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
        "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
        ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
        ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
        " ": (".....",) * 7,
        "#": (".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."),
    }

    def __init__(self, width: int, height: int, fps: int, realtime: bool = True) -> None:
        self.width, self.height, self.fps, self.realtime = width, height, fps, realtime
        self.scale = max(1, height // 240)
        probe = av.VideoFrame(width, height, "yuv420p")
        self.stride = probe.planes[0].line_size
        self.chroma_size = probe.planes[1].buffer_size
        period = 220
        self.band = bytes(16 + x % period for x in range(self.stride + 2 * height + period + 8))
        self.period = period
        s = self.scale
        on, off = b"\xeb" * s, b"\x10" * s
        # glyph row bytes, already scaled: glyphs[char][row] (7 rows, 6 columns each with the gap)
        self.glyphs = {c: [b"".join(on if px == "#" else off for px in row) + off for row in rows]
                       for c, rows in self.FONT.items()}

    def frame(self, index: int, wall: float) -> Any:
        """Frame number `index`, stamped with `wall` (Unix time)."""
        w, h, s = self.width, self.height, self.scale
        shift = (4 * index) % self.period
        band = self.band
        offsets = ((shift + 2 * r) % self.period for r in range(h))
        rows = [band[o: o + self.stride] for o in offsets]
        stamp = dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:23] + f" #{index}"
        x0 = y0 = 2 * s
        for r in range(7):
            text = b"".join(self.glyphs.get(c, self.glyphs[" "])[r] for c in stamp)[: max(0, w - x0)]
            for k in range(s):
                y = y0 + r * s + k
                if y < h:
                    rows[y] = rows[y][:x0] + text + rows[y][x0 + len(text):]
        frame = av.VideoFrame(w, h, "yuv420p")
        frame.planes[0].update(b"".join(rows))
        u = 128 + int(60 * math.sin(index / (2 * self.fps)))
        v = 128 + int(60 * math.cos(index / (3 * self.fps)))
        frame.planes[1].update(bytes((u,)) * self.chroma_size)
        frame.planes[2].update(bytes((v,)) * self.chroma_size)
        return frame

    def frames(self, stop: threading.Event) -> Frames:
        start_wall, start = time.time(), time.monotonic()
        step = TICKS // self.fps
        index = 0
        while not stop.is_set():
            due = index / self.fps
            if self.realtime and (wait := start + due - time.monotonic()) > 0:
                time.sleep(wait)  # a camera delivers frames at its rate, not faster
            yield self.frame(index, start_wall + due), index * step, start_wall + due
            index += 1


class V4L2Camera:
    """A USB/V4L2 camera through FFmpeg's v4l2 input (untested here: this machine has no camera)."""

    def __init__(self, device: str, width: int, height: int, fps: int) -> None:
        self.device, self.width, self.height, self.fps = device, width, height, fps

    def frames(self, stop: threading.Event) -> Frames:
        options = {"video_size": f"{self.width}x{self.height}", "framerate": str(self.fps)}
        with av.open(self.device, format="v4l2", options=options) as cam:
            first: float | None = None
            wall0 = 0.0
            for frame in cam.decode(video=0):
                if stop.is_set():
                    return
                t = frame.time if frame.time is not None else time.monotonic()
                if first is None:
                    first, wall0 = t, time.time()
                out = frame.reformat(width=self.width, height=self.height, format="yuv420p")
                yield out, round((t - first) * TICKS), wall0 + t - first


class PyAVBackend:
    """libx264 over frames from a `TestPattern` or a `V4L2Camera`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        s = settings
        self.source = (TestPattern(s.width, s.height, s.fps, s.realtime) if s.source == TESTSRC
                       else V4L2Camera(s.source, s.width, s.height, s.fps))
        self.stop = threading.Event()

    def encoder(self) -> Any:
        s = self.settings
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height, enc.pix_fmt = s.width, s.height, "yuv420p"
        enc.time_base = Fraction(1, TICKS)
        enc.framerate = Fraction(s.fps)
        enc.gop_size = max(1, round(s.gop * s.fps))
        # SPS/PPS repeated in every keyframe (no global header): each segment decodes on its own.
        enc.options = {"preset": s.preset, "crf": str(s.crf), "forced-idr": "1"}
        enc.open()
        return enc

    def run(self, writer: SegmentWriter, tick: Callable[[int], bool]) -> None:
        """Encode until `tick(pts)`, called before each frame, returns False; then flush and return."""
        enc = self.encoder()
        wall0: float | None = None
        for frame, pts, wall in self.source.frames(self.stop):
            if wall0 is None:
                wall0 = wall - pts / TICKS
            if not tick(pts):
                break
            frame.pts = pts
            frame.time_base = enc.time_base
            frame.pict_type = PictureType.I if writer.want_keyframe(pts) else PictureType.NONE
            for packet in enc.encode(frame):
                writer.write(packet, wall0 + packet.pts / TICKS)
        for packet in enc.encode(None):
            writer.write(packet, (wall0 or 0.0) + packet.pts / TICKS)
