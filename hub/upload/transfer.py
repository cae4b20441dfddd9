"""What a target gets for one upload: the local file, read ahead in a thread, and where to report."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from hub.upload.queue import Item

CHUNK = 4 << 20  # bytes per write call: a target pipelines it in blocks; a checkpoint after each


def sha256_of(path: str | Path, length: int | None = None) -> str:
    """Hex SHA-256 of the first `length` bytes of a file (all of it when None). Blocking: run in a thread."""
    h = hashlib.sha256()
    left = length
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


@dataclass
class Transfer:
    """One file on its way to one target. The target calls `progress(offset)` as bytes go out and
    `checkpoint(offset)` once the remote has acknowledged everything before `offset`."""

    item: Item
    remote: str  # the target's name for the file (path or URL), from its template
    progress: Callable[[int], None]
    checkpoint: Callable[[int], None]
    chunk: int = CHUNK

    @property
    def path(self) -> str:
        return self.item.path

    @property
    def size(self) -> int:
        return self.item.size

    async def chunks(self, start: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        """(offset, data) from `start` to the end, the next chunk read in a thread while this one is sent."""
        with open(self.path, "rb") as f:
            f.seek(start)
            offset = start
            ahead = asyncio.ensure_future(asyncio.to_thread(f.read, self.chunk))
            try:
                while True:
                    data = await ahead
                    if not data:
                        return
                    ahead = asyncio.ensure_future(asyncio.to_thread(f.read, self.chunk))
                    yield offset, data
                    offset += len(data)
            finally:
                # a read thread cannot be cancelled: let it finish before the file is closed
                await asyncio.gather(ahead, return_exceptions=True)

    async def prefix_sha256(self, length: int) -> str:
        return await asyncio.to_thread(sha256_of, self.path, length)
