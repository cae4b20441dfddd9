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
AHEAD = 8  # files sent but not yet verified, at most
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

    async def send(self, t: Transfer) -> Any:
        """Transfer the file; what `finish` needs to verify it."""

    async def finish(self, items: list[tuple[Transfer, Any]]) -> list[str | UploadError]:
        """Verify sent files and put them in place; per file the verification done (`sha256` or `size`) or
        why it failed. Raises UploadError when the link is lost."""


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
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(*address)
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
        w = _Worker(self, self.targets[name])
        try:
            await w.run()
        finally:
            if w.finisher is not None:
                w.finisher.cancel()

    async def _connect(self, target: Target) -> None:
        probe = self.when_reachable.get(target.name)
        if probe and not await can_connect(probe):
            raise UploadError(target.name, f"{probe[0]}:{probe[1]} does not answer (when_reachable)", False)
        await target.open()

    def _next(self, name: str, busy: list[int]) -> Item | None:
        now = time.monotonic()
        self._skip = {k: v for k, v in self._skip.items() if v > now}
        return self.queue.next(name, exclude=[*self._skip, *busy])

    def _next_skip_delay(self) -> float | None:
        return max(0.0, min(self._skip.values()) - time.monotonic()) if self._skip else None

    async def _send(self, target: Target, item: Item) -> tuple[Transfer, Any] | None:
        """Send one file; what `_finish` needs, or None when the file is gone (marked lost)."""
        path = Path(item.path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            self.queue.lost(item.id, "the file was gone before it was uploaded")
            self.log.error("LOST %s for %s: deleted before upload (camera hard limit?)", item.path, target.name)
            self._notify()
            return None
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

        t = Transfer(item, render(target.template, self.hub_id, target.name, path), progress, checkpoint)
        self.current[target.name] = item
        try:
            return t, await target.send(t)
        finally:
            self.current.pop(target.name, None)

    async def _finish(self, target: Target, items: list[tuple[Transfer, Any]]) -> list[tuple[Item, UploadError]]:
        """Verify sent files and mark the good ones done; the failures."""
        failures = []
        for (t, _), verified in zip(items, await target.finish(items), strict=True):
            item = t.item
            if isinstance(verified, UploadError):
                failures.append((item, verified))
                continue
            complete = self.queue.done(item.id, verified)
            self.done_count += 1
            self.log.info("uploaded %s to %s (%d bytes, verified by %s)", item.name, target.name, item.size,
                          verified)
            self._notify()
            if self.on_done:
                await self.on_done({"path": item.path, "target": target.name, "remote": t.remote,
                                    "size": item.size, "sha256": item.sha256, "verified": verified,
                                    "complete": complete})
        return failures

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
            async with asyncio.timeout(seconds):  # not wait_for: in 3.11 it can swallow a cancellation
                await wake.wait()
        wake.clear()


class _Worker:
    """One target's worker. It goes on sending while what it sent is verified (a `sha256sum` on the
    server takes a while, its exec maybe a login shell): files sent meanwhile are verified together, with
    one exec. At most AHEAD files wait for verification."""

    def __init__(self, up: Uploader, target: Target) -> None:
        self.up, self.target, self.name = up, target, target.name
        self.backoff = up.retry_first
        self.drops = 0  # transfers in a row whose connection broke
        self.sent: list[tuple[Transfer, Any]] = []  # sent, not yet being verified
        self.checking: list[tuple[Transfer, Any]] = []  # being verified by the finisher
        self.finisher: asyncio.Task[list[tuple[Item, UploadError]]] | None = None

    async def run(self) -> None:
        up = self.up
        while True:
            busy = [t.item.id for t, _ in (*self.sent, *self.checking)]
            item = up._next(self.name, busy=busy)
            if item is None:
                if self.sent or self.finisher is not None:
                    await self.settle()
                    continue
                await self.target.close()  # idle: no connection held open
                await up._sleep(self.name, up._next_skip_delay())
                continue
            epoch = up._epoch
            try:
                await up._connect(self.target)
            except UploadError as exc:
                await self.settle()
                await self.unreachable(exc, epoch)
                continue
            up._set_reachable(self.name, True)
            try:
                sent = await up._send(self.target, item)
            except UploadError as exc:
                await self.settle()
                await self.failed(item, exc, epoch)
                continue
            if sent is not None:
                self.sent.append(sent)
            if self.finisher is not None and (self.finisher.done() or len(self.sent) >= AHEAD):
                await self.settle(all_of_it=False)
            if self.finisher is None and self.sent:
                # Started when files wait for verification; ends when they are verified (awaited by settle).
                self.checking, self.sent = self.sent, []
                self.finisher = asyncio.create_task(up._finish(self.target, self.checking),
                                                    name=f"upload-{self.name}-finish")

    async def settle(self, all_of_it: bool = True) -> None:
        """Wait for the verification running (and, with `all_of_it`, verify what waits), and handle failures."""
        while self.finisher is not None or (all_of_it and self.sent):
            if self.finisher is None:
                self.checking, self.sent = self.sent, []
                self.finisher = asyncio.create_task(self.up._finish(self.target, self.checking),
                                                    name=f"upload-{self.name}-finish")
            task, checking = self.finisher, self.checking
            try:
                failures = await task
                self.backoff, self.drops = self.up.retry_first, 0
            except UploadError as exc:  # the link broke: every file of the batch is tried again
                failures = [(t.item, exc) for t, _ in checking]
            finally:
                self.finisher, self.checking = None, []
            for item, exc in failures:
                await self.failed(item, exc, self.up._epoch)
            if not all_of_it:
                return

    async def unreachable(self, exc: UploadError, epoch: int) -> None:
        """Unreachable, or a server we must not trust (host key, certificate) or that refuses us: nothing
        can go there now; the files wait, and the target is tried again after the backoff."""
        up = self.up
        if up.reachable[self.name] is not False:
            up.log.warning("%s; retrying with backoff", exc)
        await self.target.close()
        if epoch != up._epoch:
            return  # flushed meanwhile: try again at once, this failure is stale
        up._set_reachable(self.name, False)
        await up._sleep(self.name, self.backoff)
        self.backoff = min(self.backoff * 2, up.retry_max)

    async def failed(self, item: Item, exc: UploadError, epoch: int) -> None:
        up = self.up
        if not exc.reachable:
            # the link broke mid-file: reconnect at once (a glitch), but after DROPS in a row the target
            # counts as out of reach (a server that hangs up on us), with backoff
            await self.target.close()
            up.log.warning("%s", exc)
            self.drops += 1
            if self.drops >= DROPS:
                await self.unreachable(exc, epoch)
            return
        # this file failed on a working target: retry it after its own backoff, go on with the others
        up.queue.failed(item.id, str(exc))
        delay = min(up.retry_first * 2 ** min(item.attempts, 16), up.retry_max)
        up._skip[item.id] = time.monotonic() + delay
        up.log.warning("%s (retry in %.0f s)", exc, delay)


def render(template: str, hub_id: str, target: str, path: Path) -> str:
    """A target's name for a file: `{hub}`, `{name}`, `{stem}`, `{date}` (UTC day of its mtime), `{target}`."""
    day = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d")
    return template.format(hub=hub_id, name=path.name, stem=path.stem, date=day, target=target)
