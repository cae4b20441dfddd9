"""Uploads that never lose a file: a durable queue and the targets it feeds.

- `queue`: the SQLite (WAL) queue. A file is queued once per target, uploaded, verified, and only then
  marked done; the row keeps which verification it got (`sha256` or `size`).
- `sftp`, `https`: the targets. SFTP over asyncssh with key auth and the host key checked against a
  known_hosts file; HTTPS PUT with the server certificate always verified and an optional client cert.
- `uploader`: one worker per target (retry with backoff, an optional reachability condition), the
  progress figures, and `wait_empty` for the power job's key-off sequence.

The hub job (`hub.jobs.upload`) puts this on MQTT; `fleet hub upload …` (`hub.upload.cli`) shows
progress and can drain the queue without the hub.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class UploadError(Exception):
    """An upload to `target` failed. `reachable` False means the target could not be reached at all
    (retry later, with backoff); True means it answered but refused or broke the transfer."""

    target: str
    reason: str
    reachable: bool = True

    def __str__(self) -> str:
        return f"{self.target}: {self.reason}"
