"""The durable upload queue: one SQLite database in WAL mode, one row per (file, target).

A row goes `queued` → `done` (uploaded and verified), or `lost` when the file vanished before it was
uploaded (a hard-limit eviction by the camera quota; logged by whoever notices). `offset` is how many
bytes of the remote partial file are known to be written contiguously: a restarted upload continues
from there (never past it, so a crash cannot leave a gap).

Every change is committed with `synchronous=FULL`: once `add` returns, the file is in the queue even if
the power goes the next instant. Calls are short and run on the caller's thread (the event loop).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    target TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT,
    state TEXT NOT NULL DEFAULT 'queued',
    added REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    offset INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    verified TEXT,
    done_at REAL,
    UNIQUE (path, target)
);
CREATE INDEX IF NOT EXISTS files_state ON files (state, target, id);
"""


@dataclass(frozen=True)
class Item:
    """One queued upload: `path` to `target`."""

    id: int
    path: str
    target: str
    size: int
    sha256: str | None
    attempts: int
    offset: int

    @property
    def name(self) -> str:
        return Path(self.path).name


class Queue:
    """`Queue(path)`: open (or create) the queue database. Use as a context manager or call `close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, path: str | Path, targets: Iterable[str], size: int | None = None,
            sha256: str | None = None) -> int:
        """Queue `path` for each of `targets` unless already queued (or done) there; how many rows were added.
        A file queued again after it was done is not uploaded again (same path, same target)."""
        path = str(Path(path).resolve())
        if size is None:
            size = Path(path).stat().st_size
        now = time.time()
        with self.db:
            cur = self.db.executemany(
                "INSERT OR IGNORE INTO files (path, target, size, sha256, added) VALUES (?, ?, ?, ?, ?)",
                [(path, t, size, sha256, now) for t in targets])
        return cur.rowcount

    def known(self, paths: Iterable[str]) -> set[str]:
        """The paths among `paths` that have a row for some target."""
        rows = self.db.execute("SELECT DISTINCT path FROM files").fetchall()
        have = {r[0] for r in rows}
        return {p for p in paths if p in have}

    def next(self, target: str, exclude: Iterable[int] = ()) -> Item | None:
        """The oldest queued file for `target`, skipping the row ids in `exclude` (backing off)."""
        skip = list(exclude)
        row = self.db.execute(
            "SELECT id, path, target, size, sha256, attempts, offset FROM files WHERE state = 'queued' "
            f"AND target = ? AND id NOT IN ({','.join('?' * len(skip))}) ORDER BY id LIMIT 1",
            (target, *skip)).fetchone()
        return Item(*row) if row else None

    def pending(self, target: str | None = None) -> tuple[int, int]:
        """(files, bytes) still to upload, for one target or all."""
        sql = "SELECT COUNT(*), COALESCE(SUM(size - offset), 0) FROM files WHERE state = 'queued'"
        row = self.db.execute(sql + " AND target = ?", (target,)).fetchone() if target else \
            self.db.execute(sql).fetchone()
        return int(row[0]), int(row[1])

    def pending_targets(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT target FROM files WHERE state = 'queued'")}

    def set_hash(self, item_id: int, sha256: str, size: int) -> None:
        with self.db:
            self.db.execute("UPDATE files SET sha256 = ?, size = ? WHERE id = ?", (sha256, size, item_id))

    def checkpoint(self, item_id: int, offset: int) -> None:
        """`offset` bytes are written remotely, contiguously from the start."""
        with self.db:
            self.db.execute("UPDATE files SET offset = ? WHERE id = ?", (offset, item_id))

    def failed(self, item_id: int, error: str) -> None:
        with self.db:
            self.db.execute("UPDATE files SET attempts = attempts + 1, error = ? WHERE id = ?", (error, item_id))

    def done(self, item_id: int, verified: str) -> bool:
        """Mark verified; True when the file is now done on every target it was queued for."""
        with self.db:
            self.db.execute("UPDATE files SET state = 'done', verified = ?, done_at = ?, offset = size, error = NULL "
                            "WHERE id = ?", (verified, time.time(), item_id))
            left = self.db.execute("SELECT COUNT(*) FROM files WHERE path = (SELECT path FROM files WHERE id = ?) "
                                   "AND state = 'queued'", (item_id,)).fetchone()[0]
        return left == 0

    def lost(self, item_id: int, reason: str) -> None:
        with self.db:
            self.db.execute("UPDATE files SET state = 'lost', error = ? WHERE id = ?", (reason, item_id))

    def prune(self, before: float) -> int:
        """Forget done and lost rows finished before `before` (Unix time) whose file is gone, so the queue
        does not grow forever; rows forgotten. A row whose file still exists stays: a scan would queue it again."""
        rows = self.db.execute("SELECT id, path FROM files WHERE state != 'queued' AND COALESCE(done_at, added) < ?",
                               (before,)).fetchall()
        gone = [(row_id,) for row_id, path in rows if not os.path.exists(path)]
        with self.db:
            self.db.executemany("DELETE FROM files WHERE id = ?", gone)
        return len(gone)

    def rows(self, state: str | None = None) -> list[dict[str, object]]:
        """Every row (or those in `state`), oldest first, as dicts: for `fleet hub upload status` and tests."""
        cur = self.db.execute("SELECT * FROM files" + (" WHERE state = ?" if state else "") + " ORDER BY id",
                              (state,) if state else ())
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
