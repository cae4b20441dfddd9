"""The config server's memory: one SQLite file in WAL mode, shared by every server process on the machine.

It holds the devices seen (status, firmware, the config each holds, was sent and acked), the versions
given out (so counters keep increasing across restarts and agree between processes), the logs collected
from `<home>/log/#`, and the lease that picks the one process which pushes configs on file changes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.topics import LOG_LEVELS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    status TEXT, last_online REAL, last_offline REAL, last_seen REAL,
    platform TEXT, fw TEXT, holds TEXT, info TEXT,
    sent TEXT, sent_at REAL,
    acked TEXT, ack_state TEXT, ack_detail TEXT, ack_at REAL,
    unknown_requests INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE TABLE IF NOT EXISTS versions (
    device TEXT NOT NULL, counter INTEGER NOT NULL, hash TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (device, counter)
);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, device TEXT NOT NULL, level INTEGER NOT NULL, line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_device ON logs (device, id);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
"""

DEVICE_COLUMNS = ("status", "last_online", "last_offline", "last_seen", "platform", "fw", "holds", "info",
                  "sent", "sent_at", "acked", "ack_state", "ack_detail", "ack_at", "error")


def default_path() -> Path:
    """`$XDG_STATE_HOME/smartfleet/config-server.sqlite` (`~/.local/state/…`): outside the registry folder,
    so the state survives that folder being moved or removed."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "smartfleet" / "config-server.sqlite"


@dataclass(frozen=True)
class LogLine:
    id: int
    time: float
    device: str
    level: str
    line: str


class State:
    """Open with `State(path)`; every method is one short transaction. Not shared between threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (`_write`), so a read never holds a lock.
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so concurrent processes queue, never deadlock."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # Versions

    def version_for(self, device: str, hash8: str) -> int:
        """The counter of this content: the latest one when it is the latest content, else a new, higher one."""
        with self._write() as db:
            row = db.execute("SELECT counter, hash FROM versions WHERE device=? ORDER BY counter DESC LIMIT 1",
                             (device,)).fetchone()
            if row is not None and row[1] == hash8:
                return int(row[0])
            counter = (row[0] if row else 0) + 1
            db.execute("INSERT INTO versions VALUES (?,?,?,?)", (device, counter, hash8, time.time()))
            return counter

    def known_version(self, device: str, v: str) -> bool:
        counter, _, hash8 = v.partition("-")
        if not counter.isdigit():
            return False
        return self.db.execute("SELECT 1 FROM versions WHERE device=? AND counter=? AND hash=?",
                               (device, int(counter), hash8)).fetchone() is not None

    # Devices

    def update_devices(self, updates: dict[str, dict[str, Any]]) -> None:
        """Set columns of many devices in one transaction: {id: {column: value}}."""
        if not updates:
            return
        with self._write() as db:
            for device, cols in updates.items():
                bad = set(cols) - set(DEVICE_COLUMNS) - {"unknown_requests"}
                if bad:
                    raise ValueError(f"no such device columns: {bad}")
                db.execute("INSERT OR IGNORE INTO devices (id) VALUES (?)", (device,))
                if cols:
                    sets = ", ".join(f"{c}=?" for c in cols)
                    db.execute(f"UPDATE devices SET {sets} WHERE id=?", (*cols.values(), device))

    def count_unknown(self, counts: dict[str, int], now: float) -> None:
        with self._write() as db:
            for device, n in counts.items():
                db.execute("INSERT OR IGNORE INTO devices (id) VALUES (?)", (device,))
                db.execute("UPDATE devices SET unknown_requests=unknown_requests+?, last_seen=? WHERE id=?",
                           (n, now, device))

    def devices(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM devices ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def device(self, device: str) -> dict[str, Any] | None:
        cur = self.db.execute("SELECT * FROM devices WHERE id=?", (device,))
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    # Logs

    def add_logs(self, rows: list[tuple[float, str, str, str]]) -> None:
        """Store (time, device, level, line) rows."""
        if rows:
            with self._write() as db:
                db.executemany("INSERT INTO logs (time, device, level, line) VALUES (?,?,?,?)",
                               [(t, d, LOG_LEVELS.index(lv), line) for t, d, lv, line in rows])

    def logs(self, device: str | None = None, min_level: str = "debug", after_id: int = 0,
             limit: int | None = None) -> list[LogLine]:
        """Log lines in order; with `limit`, the last `limit` of them."""
        where = ["id > ?", "level >= ?"]
        args: list[Any] = [after_id, LOG_LEVELS.index(min_level)]
        if device:
            where.append("device = ?")
            args.append(device)
        sql = f"SELECT id, time, device, level, line FROM logs WHERE {' AND '.join(where)} ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self.db.execute(sql, args).fetchall()
        return [LogLine(i, t, d, LOG_LEVELS[lv], line) for i, t, d, lv, line in reversed(rows)]

    def prune_logs(self, max_age: float, max_bytes: int, now: float | None = None) -> int:
        """Drop log lines older than `max_age` seconds, then the oldest until the text is under `max_bytes`."""
        now = time.time() if now is None else now
        with self._write() as db:
            dropped = db.execute("DELETE FROM logs WHERE time < ?", (now - max_age,)).rowcount
            rows, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(line) + 40), 0) FROM logs").fetchone()
            if size > max_bytes and rows:
                # Lines are of similar size: drop the oldest share that brings the total to 90 % of the cap.
                keep = int(rows * (max_bytes * 0.9) / size)
                cut = db.execute("SELECT id FROM logs ORDER BY id DESC LIMIT 1 OFFSET ?", (keep,)).fetchone()
                if cut is not None:
                    dropped += db.execute("DELETE FROM logs WHERE id <= ?", (cut[0],)).rowcount
        return dropped

    # The pusher lease

    def hold_lease(self, name: str, owner: str, ttl: float, now: float | None = None) -> bool:
        """Take or renew the lease `name` for `ttl` seconds; False while another live owner holds it."""
        now = time.time() if now is None else now
        with self._write() as db:
            row = db.execute("SELECT owner, expires FROM leases WHERE name=?", (name,)).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return False
            db.execute("INSERT OR REPLACE INTO leases VALUES (?,?,?)", (name, owner, now + ttl))
            return True

    def release_lease(self, name: str, owner: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, owner))


def ack_detail(payload: dict[str, Any]) -> str | None:
    """The errors of a refused ack, or the failed components of an applied one, as compact JSON."""
    detail = payload.get("errors") or payload.get("failed")
    return json.dumps(detail, separators=(",", ":")) if detail else None
