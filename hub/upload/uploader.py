"""The uploader: one worker per target draining the queue, retry with backoff, progress figures, and
`wait_empty` for the key-off sequence.

A worker takes its target's oldest queued file, connects (or waits while the target, or the network
its `when_reachable` probe stands for, is out of reach: 2 s, 4 s, … up to `retry_max`), uploads,
verifies, and only then marks the row done. A file that fails on a reachable target is retried after
its own backoff while the others go ahead. A file that vanished before upload (the camera's hard limit
evicted it) is marked `lost` and logged at error: the only way a queued file is ever given up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from hub.upload import UploadError
from hub.upload.queue import Item, Queue
from hub.upload.transfer import Transfer, sha256_of

TARGET_TYPES = ("sftp", "https")
DROPS = 3  # broken transfers in a row after which a target counts as out of reach
CHECKPOINT_EVERY = 0.25  # seconds between offset checkpoints (SQLite commits): bounds what a crash re-sends


class Target(Protocol):
    name: str
    kind: str
    template: str

    @property
    def address(self) -> tuple[str, int]: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def upload(self, t: Transfer) -> str: ...


def make_target(name: str, config: dict[str, Any]) -> Target:
    """A target from its `upload.targets.<name>` section (`type`: sftp or https)."""
    kind = config.get("type")
    if kind == "sftp":
        from hub.upload.sftp import SftpTarget
        return SftpTarget(name, **config)
    if kind == "https":
        from hub.upload.https import HttpsTarget
        return HttpsTarget(name, **config)
    raise ValueError(f"target {name}: type must be one of {', '.join(TARGET_TYPES)}, not {kind!r}")


def parse_address(text: str, default_port: int = 0) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) → (host, port); ValueError when there is no usable port."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = str(text), str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


async def can_connect(address: tuple[str, int], timeout: float = 3.0) -> bool:
    """Does a TCP connection to `address` open within `timeout`? (the `when_reachable` probe)"""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


class Uploader:
    """Drains `queue` into `targets`. `run()` is the life of the workers; everything else is called
    from the same event loop."""

    def __init__(self, queue: Queue, targets: dict[str, Target], *, hub_id: str,
                 when_reachable: dict[str, tuple[str, int]] | None = None, retry_first: float = 2.0,
                 retry_max: float = 300.0, log: logging.Logger | None = None,
                 on_done: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> None:
        self.queue = queue
        self.targets = targets
        self.hub_id = hub_id
        self.when_reachable = when_reachable or {}
        self.retry_first, self.retry_max = retry_first, retry_max
        self.log = log or logging.getLogger("hub.upload")
        self.on_done = on_done
        self.reachable: dict[str, bool | None] = dict.fromkeys(targets)  # None: not tried since the last flush
        self.current: dict[str, Item] = {}
        self.sent = 0  # bytes written to targets since start (for the rate)
        self.done_count = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        self._wake = {name: asyncio.Event() for name in targets}
        self._changed = asyncio.Event()
        self._skip: dict[int, float] = {}  # row id → monotonic time before which it is not retried
        self._epoch = 0  # counts flushes: an attempt begun before a flush does not answer wait_empty

    # --- what the job and the CLI call -----------------------------------------------------------

    def add(self, path: str | Path, size: int | None = None, sha256: str | None = None) -> int:
        """Queue a file for every target (durable when this returns); rows added."""
        added = self.queue.add(path, self.targets, size, sha256)
        if added:
            self._notify()
            for event in self._wake.values():
                event.set()
        return added

    async def scan(self, folder: Path, patterns: list[str]) -> int:
        """Queue the files matching `patterns` in `folder` that the queue has never seen (segments closed
        while the hub was down, whose announcement nobody heard); files queued."""

        def find() -> list[str]:
            return sorted(str(p.resolve()) for pat in patterns for p in folder.glob(pat) if p.is_file())

        found = await asyncio.to_thread(find)
        known = self.queue.known(found)
        new = [p for p in found if p not in known]
        for p in new:
            self.add(p)
        return len(new)

    def flush(self) -> None:
        """Retry every target now, forgetting backoffs; reachability is unknown until tried again."""
        self._skip.clear()
        self._epoch += 1
        for name, event in self._wake.items():
            if self.reachable[name] is False:
                self.reachable[name] = None
            event.set()
        self._notify()

    async def wait_empty(self) -> str:
        """`empty` once nothing is queued, or `unreachable` as soon as every target that still has files
        cannot be reached (tried afresh: this flushes first). Disks are synced before it returns."""
        self.flush()
        while True:
            changed = self._changed
            pending = self.queue.pending_targets()
            if not pending or all(self.reachable.get(t) is False for t in pending):
                break
            await changed.wait()
        await asyncio.to_thread(os.sync)
        return "unreachable" if pending else "empty"

    def status(self) -> dict[str, Any]:
        """The progress figures published on `<home>/<hub>/upload`."""
        files, pending = self.queue.pending()
        now = time.monotonic()
        recent = [(t, n) for t, n in self._samples if now - t <= 5.0]
        rate = (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0]) if len(recent) > 1 and \
            recent[-1][0] > recent[0][0] else 0.0
        current = next(iter(self.current.values()), None)
        return {"queued": files, "bytes_pending": pending, "current": current.name if current else None,
                "current_size": current.size if current else None,
                "current_offset": current.offset if current else None,
                "rate": round(rate, 1), "sent": self.sent, "done": self.done_count,
                "reachable": dict(self.reachable)}

    # --- the workers -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Started by the upload job (or `fleet hub upload drain`); ends when cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                for name in self.targets:
                    # one per target, for the uploader's whole life
                    tg.create_task(self._worker(name), name=f"upload-{name}")
        finally:
            for target in self.targets.values():
                await target.close()

    async def _worker(self, name: str) -> None:
        target = self.targets[name]
        backoff = self.retry_first
        drops = 0  # transfers in a row whose connection broke
        while True:
            item = self._next(name)
            if item is None:
                await target.close()  # idle: no connection held open
                await self._sleep(name, self._next_skip_delay())
                continue
            epoch = self._epoch
            try:
                await self._connect(target)
            except UploadError as exc:
                # unreachable, or a server we must not trust (host key, certificate) or that refuses us:
                # either way nothing can go there now; the files wait
                if self.reachable[name] is not False:
                    self.log.warning("%s; retrying with backoff", exc)
                await target.close()
                if epoch != self._epoch:
                    continue  # flushed meanwhile: try again at once, this failure is stale
                self._set_reachable(name, False)
                await self._sleep(name, backoff)
                backoff = min(backoff * 2, self.retry_max)
                continue
            self._set_reachable(name, True)
            try:
                await self._upload(target, item)
                backoff, drops = self.retry_first, 0
            except UploadError as exc:
                if not exc.reachable:
                    # the link broke mid-file: reconnect at once (a glitch), but after DROPS in a row the
                    # target counts as out of reach (a server that hangs up on us), with backoff
                    await target.close()
                    self.log.warning("%s", exc)
                    drops += 1
                    if drops >= DROPS and epoch == self._epoch:
                        self._set_reachable(name, False)
                        await self._sleep(name, backoff)
                        backoff = min(backoff * 2, self.retry_max)
                    continue
                # this file failed on a working target: retry it after its own backoff, go on with others
                self.queue.failed(item.id, str(exc))
                delay = min(self.retry_first * 2 ** min(item.attempts, 16), self.retry_max)
                self._skip[item.id] = time.monotonic() + delay
                self.log.warning("%s (retry in %.0f s)", exc, delay)

    async def _connect(self, target: Target) -> None:
        probe = self.when_reachable.get(target.name)
        if probe and not await can_connect(probe):
            raise UploadError(target.name, f"{probe[0]}:{probe[1]} does not answer (when_reachable)", False)
        await target.open()

    def _next(self, name: str) -> Item | None:
        now = time.monotonic()
        self._skip = {k: v for k, v in self._skip.items() if v > now}
        return self.queue.next(name, exclude=self._skip)

    def _next_skip_delay(self) -> float | None:
        return max(0.0, min(self._skip.values()) - time.monotonic()) if self._skip else None

    async def _upload(self, target: Target, item: Item) -> bool:
        """Upload one file; True when done (or given up as lost)."""
        path = Path(item.path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            self.queue.lost(item.id, "the file was gone before it was uploaded")
            self.log.error("LOST %s for %s: deleted before upload (camera hard limit?)", item.path, target.name)
            self._notify()
            return True
        if item.sha256 is None or size != item.size:
            digest = await asyncio.to_thread(sha256_of, path)
            self.queue.set_hash(item.id, digest, size)
            item = Item(item.id, item.path, item.target, size, digest, item.attempts, item.offset)
        last = [time.monotonic(), item.offset]

        def progress(offset: int) -> None:
            self.sent += max(0, offset - last[1])
            last[1] = offset
            self.current[target.name] = Item(item.id, item.path, item.target, item.size, item.sha256,
                                             item.attempts, offset)
            self._samples.append((time.monotonic(), self.sent))

        def checkpoint(offset: int) -> None:
            last[1] = min(last[1], offset)
            if offset == 0 or time.monotonic() - last[0] >= CHECKPOINT_EVERY:
                self.queue.checkpoint(item.id, offset)
                last[0] = time.monotonic()

        remote = render(target.template, self.hub_id, target.name, path)
        self.current[target.name] = item
        try:
            verified = await target.upload(Transfer(item, remote, progress, checkpoint))
        finally:
            self.current.pop(target.name, None)
        complete = self.queue.done(item.id, verified)
        self.done_count += 1
        self.log.info("uploaded %s to %s (%d bytes, verified by %s)", path.name, target.name, item.size, verified)
        self._notify()
        if self.on_done:
            await self.on_done({"path": item.path, "target": target.name, "remote": remote, "size": item.size,
                                "sha256": item.sha256, "verified": verified, "complete": complete})
        return True

    def _set_reachable(self, name: str, value: bool) -> None:
        if self.reachable[name] != value:
            self.reachable[name] = value
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _sleep(self, name: str, seconds: float | None) -> None:
        """Sleep `seconds` (forever when None) or until woken by `add`/`flush`."""
        wake = self._wake[name]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)
        wake.clear()


def render(template: str, hub_id: str, target: str, path: Path) -> str:
    """A target's name for a file: `{hub}`, `{name}`, `{stem}`, `{date}` (UTC day of its mtime), `{target}`."""
    day = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d")
    return template.format(hub=hub_id, name=path.name, stem=path.stem, date=day, target=target)
