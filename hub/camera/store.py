"""The segment folder as loop-recording storage: which segments are uploaded, and the quota.

Over `quota` bytes, the oldest *uploaded* segments are deleted first. A segment not yet uploaded is
deleted only when the folder is over `hard_limit` (oldest first), and each such deletion is logged at
error level: it is the one way the fleet loses footage. Which segments are uploaded is learnt from
`<home>/<hub>/upload/done` and kept in `.uploaded.json` next to them (written atomically), so it
survives restarts; "oldest" is the order of modification time (a segment is last written when it closes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hub.camera.segments import PART, fsync_folder, parse_name

SIDECAR = ".uploaded.json"


@dataclass(frozen=True)
class Deleted:
    path: Path
    size: int
    uploaded: bool


class SegmentStore:
    def __init__(self, folder: Path, quota: int, hard_limit: int, log: logging.Logger) -> None:
        self.folder = folder
        self.quota = quota
        self.hard_limit = max(hard_limit, quota)
        self.log = log
        folder.mkdir(parents=True, exist_ok=True)
        self.uploaded: set[str] = self._load()

    def _load(self) -> set[str]:
        try:
            data = json.loads((self.folder / SIDECAR).read_text())
        except FileNotFoundError:
            return set()
        except ValueError as exc:
            self.log.error("%s is unreadable (%s): every segment counts as not uploaded", SIDECAR, exc)
            return set()
        return {name for name in data.get("uploaded", []) if isinstance(name, str)}

    def _save(self) -> None:
        tmp = self.folder / (SIDECAR + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"uploaded": sorted(self.uploaded)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / SIDECAR)
        fsync_folder(self.folder)

    def segments(self) -> list[Path]:
        """Closed segments, oldest first."""
        found = [p for p in self.folder.glob("*.mp4") if parse_name(p) and not p.name.endswith(PART)]
        return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def mark_uploaded(self, path: str) -> bool:
        """Note that `path` (as announced on upload/done) is uploaded; False when it is none of ours."""
        p = Path(path)
        if p.parent.resolve() != self.folder.resolve() or not parse_name(p) or p.name in self.uploaded:
            return False
        self.uploaded.add(p.name)
        self._save()
        return True

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.segments())

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free

    def enforce(self) -> list[Deleted]:
        """Delete segments until the folder is within its quota (uploaded ones only) and its hard limit."""
        sizes = [(p, p.stat().st_size) for p in self.segments()]
        total = sum(size for _, size in sizes)
        deleted: list[Deleted] = []
        for path, size in sizes:
            if total <= self.quota:
                break
            if path.name in self.uploaded:
                path.unlink()
                total -= size
                deleted.append(Deleted(path, size, True))
        for path, size in sizes:
            if total <= self.hard_limit:
                break
            if path.exists():
                path.unlink()
                total -= size
                deleted.append(Deleted(path, size, False))
                self.log.error("deleted %s (%d bytes) before it was uploaded: the hard limit of %d bytes was hit",
                               path.name, size, self.hard_limit)
        if deleted:
            fsync_folder(self.folder)
            gone = {d.path.name for d in deleted}
            if self.uploaded & gone:
                self.uploaded -= gone
                self._save()
        return deleted
