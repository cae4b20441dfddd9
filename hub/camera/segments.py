"""Self-contained MP4 segments that survive a power cut.

A segment is written as `<name>.mp4.part`, fragmented MP4 (a fragment per keyframe and at least every
`FRAGMENT` seconds, fsynced every `Settings.sync` seconds), so even a `.part` cut off by a power loss
holds playable video up to its last complete fragment. When a segment closes, its file and then its
folder are fsynced and it is renamed to `<kind>.<capture-utc>.<boot-id>.<seq>.mp4`. A capture is a
contiguous run of segments; the boot id tells apart two captures of a Pi without a real-time clock
whose clock started from the same time.

At the next start `recover` turns each `.part` into a segment (the complete fragments, remuxed) or
deletes it when it holds no complete frame.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from hub.camera import Settings

TICKS = 90_000  # the 90 kHz clock of MPEG video timestamps; every packet's pts/dts is in it
FRAGMENT = 1.0  # seconds: the most video a power cut can cost inside the fragments already written
PART = ".part"
_MUX_OPTIONS = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof+delay_moov",
    "frag_duration": str(int(FRAGMENT * 1_000_000)),
}
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

log = logging.getLogger("hub.camera")


def boot_id() -> str:
    """The first 8 hex digits of this boot's id (Linux), `00000000` where the kernel gives none."""
    try:
        return _BOOT_ID.read_text().strip().replace("-", "")[:8]
    except OSError:
        return "00000000"


def capture_name(kind: str, wall: float, boot: str) -> str:
    """`<kind>.<capture-utc>.<boot-id>`: the name every segment of one capture starts with."""
    utc = dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{kind}.{utc}.{boot}"


def segment_name(capture: str, seq: int) -> str:
    return f"{capture}.{seq:04d}.mp4"


def fsync_folder(folder: Path) -> None:
    """Make a rename or unlink in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Segment:
    """A closed segment. `announcement()` is the payload of `<home>/<hub>/camera/segment`."""

    path: str
    capture: str
    seq: int
    duration: float  # seconds, first frame to the end of the last
    size: int
    sha256: str
    frames: int
    start: float  # seconds from the recorder's first frame to this segment's first frame
    recovered: bool = False  # made at start-up from a `.part` left by a crash or power cut

    def announcement(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.recovered:
            del data["recovered"]
        return data


class _HashingFile(io.RawIOBase):
    """The file a segment is muxed into: hashes and counts what is written, so closing needs no read-back.
    The fragmented MP4 muxer only appends; a seek (never seen) would make the hash be computed from disk."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.raw = open(path, "wb")  # noqa: SIM115  # closed by finish(), in the closer thread
        self.sha = hashlib.sha256()
        self.size = 0
        self.appended_only = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = self.raw.write(data)
        if self.appended_only:
            self.sha.update(memoryview(data)[:n])
        self.size = max(self.size, self.raw.tell())
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        self.appended_only = False
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def sync(self) -> None:
        self.raw.flush()
        os.fsync(self.raw.fileno())

    def finish(self) -> tuple[int, str]:
        """fsync and close; the size and sha256 of what is on disk."""
        self.sync()
        self.raw.close()
        digest = self.sha.hexdigest() if self.appended_only else sha256_file(Path(self.raw.name))
        return self.size, digest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _Open:
    """The segment being written."""

    name: str
    seq: int
    file: _HashingFile
    out: Any  # av OutputContainer
    stream: Any
    first_pts: int
    last_pts: int
    frames: int = 0
    synced: float = 0.0


class SegmentWriter:
    """Cuts a stream of encoded H.264 packets into segments, at keyframes only, never dropping a frame.

    Used by one thread in the recorder process. `begin(kind)` starts a capture at the next keyframe (a
    capture already running ends right before it); `end()` closes the open segment after the last packet
    written. Packets carry pts/dts in `TICKS`, starting from the recording's first frame. Closing (fsync,
    rename, folder fsync) runs on a worker thread so that the encoder never waits for the card; each
    closed segment is passed to `on_closed` there, in order.
    """

    def __init__(self, settings: Settings, on_closed: Callable[[Segment], None], boot: str | None = None) -> None:
        self.folder = Path(settings.folder)
        self.settings = settings
        self.on_closed = on_closed
        self.boot = boot or boot_id()
        self.segment_ticks = round(settings.segment * TICKS)
        self.frame_ticks = round(TICKS / settings.fps)
        self.capture: str | None = None
        self.kind: str | None = None
        self._pending: str | None = None  # the kind of the capture to begin at the next keyframe
        self._seq = 0
        self._open: _Open | None = None
        self._asked = False  # a keyframe was forced for the split that is due and has not come out yet
        self._closer = ThreadPoolExecutor(1, thread_name_prefix="segment-closer")
        self.skipped = 0  # packets dropped while waiting for the keyframe that starts a capture
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def recording(self) -> bool:
        return self.capture is not None or self._pending is not None

    def begin(self, kind: str) -> None:
        self._pending = kind

    def end(self) -> None:
        self._pending = None
        self.capture = self.kind = None
        self._close()

    def split_due(self, pts: int) -> bool:
        """Whether a keyframe at `pts` starts a new segment: a capture begins, or the open segment is full."""
        if self._pending is not None:
            return True
        seg = self._open
        return seg is not None and pts - seg.first_pts >= self.segment_ticks - self.frame_ticks // 2

    def want_keyframe(self, pts: int) -> bool:
        """Whether the frame at `pts` should be forced to be a keyframe: the first frame of each split that
        is due. An encoder delivers that keyframe some frames later (lookahead); meanwhile the frames
        after it are left to the encoder's own choice. A backend that can force keyframes asks this for
        every frame; the pyav backend does."""
        if self._asked or not self.split_due(pts):
            return False
        self._asked = True
        return True

    def write(self, packet: Any, wall: float) -> None:
        """Mux one packet (an `av.Packet`, pts/dts in TICKS); `wall` is the Unix time its frame was taken."""
        if packet.is_keyframe and (self._pending is not None or (self._open and self.split_due(packet.pts))):
            if self._pending is not None:
                self.kind, self._pending = self._pending, None
                self.capture = capture_name(self.kind, wall, self.boot)
                self._seq = 0
            self._close()
            self._start(packet.pts, wall)
            self._asked = False
        seg = self._open
        if seg is None:
            if self.recording:
                self.skipped += 1
            return
        first = seg.first_pts
        pts = packet.pts
        packet.dts = (packet.dts if packet.dts is not None else pts) - first  # each segment starts at 0
        packet.pts = pts - first
        packet.duration = self.frame_ticks
        packet.stream = seg.stream
        packet.time_base = seg.stream.time_base
        seg.out.mux(packet)
        seg.frames += 1
        seg.last_pts = max(seg.last_pts, pts)
        now = time.monotonic()
        if now - seg.synced >= self.settings.sync:
            seg.synced = now
            self._closer.submit(_quiet_sync, seg.file)

    def close(self) -> None:
        """End any capture and wait until every segment is closed."""
        self.end()
        self._closer.shutdown(wait=True)

    def _start(self, pts: int, wall: float) -> None:
        assert self.capture is not None
        self._seq += 1
        name = segment_name(self.capture, self._seq)
        file = _HashingFile(self.folder / (name + PART))
        out = av.open(file, "w", format="mp4", options=_MUX_OPTIONS)
        stream = out.add_mux_stream("h264", rate=self.settings.fps, width=self.settings.width,
                                    height=self.settings.height)
        stream.time_base = Fraction(1, TICKS)
        out.metadata["title"] = name
        out.metadata["comment"] = json.dumps({"capture": self.capture, "seq": self._seq, "start": pts / TICKS,
                                              "wall": wall})
        out.metadata["creation_time"] = dt.datetime.fromtimestamp(wall, dt.UTC).isoformat()
        self._open = _Open(name, self._seq, file, out, stream, pts, pts, synced=time.monotonic())

    def _close(self) -> None:
        seg, self._open = self._open, None
        if seg is None:
            return
        seg.out.close()  # writes the last fragment; the file itself is finished on the closer thread
        capture = seg.name.rsplit(".", 2)[0]
        duration = (seg.last_pts - seg.first_pts + self.frame_ticks) / TICKS
        self._closer.submit(self._finish, seg, capture, duration)

    def _finish(self, seg: _Open, capture: str, duration: float) -> None:
        size, digest = seg.file.finish()
        final = self.folder / seg.name
        os.replace(self.folder / (seg.name + PART), final)
        fsync_folder(self.folder)
        try:
            self.on_closed(Segment(str(final), capture, seg.seq, round(duration, 6), size, digest, seg.frames,
                                   round(seg.first_pts / TICKS, 6)))
        except Exception:
            log.exception("announcing %s failed", final)


def _quiet_sync(file: _HashingFile) -> None:
    with contextlib.suppress(ValueError, OSError):  # closed in the meantime: finish() synced it
        file.sync()


def parse_name(path: Path) -> tuple[str, int] | None:
    """(capture, seq) of a segment file name, or None for a file that is not one."""
    name = path.name.removesuffix(PART)
    parts = name.split(".")
    if len(parts) != 5 or parts[4] != "mp4" or not parts[3].isdigit():
        return None
    return ".".join(parts[:3]), int(parts[3])


def recover(folder: Path) -> list[Segment]:
    """Turn every `.part` in `folder` into a segment, or delete it when it holds no complete frame.

    Runs before a recorder starts (never while one writes the folder). Returns the recovered segments."""
    recovered: list[Segment] = []
    for tmp in folder.glob("*.recovering"):
        tmp.unlink()  # a recovery cut off by another crash: its .part is still there
    for part in sorted(folder.glob("*.mp4" + PART)):
        named = parse_name(part)
        final = part.with_name(part.name.removesuffix(PART))
        tmp = part.with_name(final.name + ".recovering")
        try:
            frames, duration, start = _remux(part, tmp)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s), deleted", part.name, exc)
            frames = 0
        if frames and named:
            os.replace(tmp, final)
            part.unlink()
            fsync_folder(folder)
            recovered.append(Segment(str(final), named[0], named[1], round(duration, 6), final.stat().st_size,
                                     sha256_file(final), frames, start, recovered=True))
            log.info("%s: recovered %d frames (%.2f s) from the .part", final.name, frames, duration)
        else:
            tmp.unlink(missing_ok=True)
            part.unlink()
            fsync_folder(folder)
            log.info("%s: no complete frame, deleted", part.name)
    return recovered


def _remux(part: Path, dest: Path) -> tuple[int, float, float]:
    """Copy the complete packets of a cut-off fragmented MP4 into `dest` (fsynced).
    Returns (frames, duration in seconds, start as written in the segment's metadata)."""
    size = part.stat().st_size
    frames, first, last, step = 0, None, 0, 0
    with av.open(str(part)) as src:
        ist = src.streams.video[0]
        meta = dict(src.metadata)
        with open(dest, "wb") as f:
            out = av.open(f, "w", format="mp4", options=_MUX_OPTIONS)
            out.metadata.update({k: v for k, v in meta.items() if k in ("title", "comment", "creation_time")})
            ost = out.add_stream_from_template(ist)
            try:
                for pkt in src.demux(ist):
                    if pkt.size == 0 or pkt.pts is None:
                        continue
                    if pkt.pos is not None and pkt.pos >= 0 and pkt.pos + pkt.size > size:
                        break  # the packet the power cut interrupted
                    first = pkt.pts if first is None else first
                    last = max(last, pkt.pts)
                    step = pkt.duration or step
                    pkt.stream = ost
                    out.mux(pkt)
                    frames += 1
            except av.error.FFmpegError:
                pass  # a torn fragment ends what can be read; what came before it is whole
            out.close()
            f.flush()
            os.fsync(f.fileno())
        duration = float((last - (first or 0) + step) * ist.time_base) if frames else 0.0
    try:
        start = float(json.loads(meta.get("comment", "{}")).get("start", 0.0))
    except (ValueError, AttributeError):
        start = 0.0
    return frames, duration, start
