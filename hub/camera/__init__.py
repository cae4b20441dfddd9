"""The dashcam: backends that capture and encode H.264, and the segment writer they all feed.

A recording runs in its own process (`hub.camera.recorder`), so encoding never stalls the hub's event
loop. In that process a backend produces encoded H.264 packets and hands them to one `SegmentWriter`
(`hub.camera.segments`), which cuts them into self-contained MP4 segments at keyframes:

- `pyav`: a V4L2/USB camera, or the synthetic moving test pattern, encoded with libx264 (software; a
  Pi 5 has no H.264 encoder). It forces a keyframe at each segment boundary.
- `picamera2`: a Pi camera module through Picamera2 and the Pi's hardware H.264 encoder, whose intra
  period is set so keyframes fall on segment boundaries. Imported only when chosen.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

BACKENDS = ("pyav", "picamera2")
TESTSRC = "testsrc"
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: int | float | str) -> int:
    """Bytes from a number or a text like `8G`, `500MB`, `1.5GiB` (binary units); ValueError if neither."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value!r}")
        return int(value)
    m = _SIZE.fullmatch(str(value))
    if not m:
        raise ValueError(f"expected a size like 8G or 500M, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class Settings:
    """What a recording needs to know; the camera section of `hub.hjson` plus the hub's folder.

    Sent to the recorder process as JSON, so every field is plain data."""

    folder: str
    backend: str = "pyav"
    source: str = TESTSRC  # pyav: "testsrc" or a V4L2 device such as /dev/video0
    width: int = 1280
    height: int = 720
    fps: int = 30
    segment: float = 60.0  # seconds per segment
    gop: float = 2.0  # seconds between keyframes inside a segment
    preset: str = "veryfast"  # libx264 preset (pyav backend)
    crf: int = 26  # libx264 quality (pyav backend)
    bitrate: int = 4_000_000  # hardware encoder bit rate (picamera2 backend)
    realtime: bool = True  # testsrc: pace frames like a camera; False encodes as fast as it can (benches)
    sync: float = 1.0  # seconds between fsyncs of the open segment: at most this much is lost to a power cut

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RecorderError(Exception):
    """The recorder process failed: its exit code and the last lines it wrote to stderr."""

    returncode: int | None
    detail: str

    def __str__(self) -> str:
        return f"camera recorder exited with {self.returncode}: {self.detail}"
