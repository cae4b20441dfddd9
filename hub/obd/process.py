"""The OBD job's side of the adapter worker (hub/obd/worker.py): start it, send it requests, read its
reports. Nothing here waits on the adapter: the event loop only reads and writes pipes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hub.children import end_child
from hub.obd.link import LinkSettings

STOP_TIMEOUT = 5.0


class WorkerError(Exception):
    """The adapter worker ended, or failed a request; `link_down` when there was no car to ask."""

    def __init__(self, message: str, link_down: bool = False) -> None:
        super().__init__(message)
        self.link_down = link_down


class Worker:
    """`async with Worker(settings, log) as w: async for kind, data in w.reports(): …`"""

    def __init__(self, settings: LinkSettings, log: logging.Logger) -> None:
        self.settings = settings
        self.log = log
        self.watching: dict[str, float] = {}  # as sent to the worker, for replies without a round trip
        self._proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._stderr: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Worker:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.obd.worker", json.dumps(dataclasses.asdict(self.settings)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=1 << 20)
        # Started with the worker; ends when the worker's stderr closes (the worker ended).
        self._stderr = asyncio.create_task(self._relay_log(), name="obd-worker-log")
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the worker's signal to close the adapter and end
        await end_child(proc, STOP_TIMEOUT, self.log, "adapter worker")
        if self._stderr is not None:
            await self._stderr
        for future in self._pending.values():
            future.cancel()

    async def _relay_log(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            level_name, _, message = line.partition(" ")
            level = logging.getLevelName(level_name)
            if isinstance(level, int):
                self.log.log(level, "%s", message)
            elif line:
                self.log.error("adapter worker: %s", line)  # a traceback, say

    def usage(self) -> tuple[float, int] | None:
        """CPU seconds used so far and resident bytes of the worker (Linux), None when it is not running."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return None
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            pages = int(Path(f"/proc/{proc.pid}/statm").read_text().split()[1])
            ticks = int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, ValueError, IndexError):
            return None
        return ticks / os.sysconf("SC_CLK_TCK"), pages * os.sysconf("SC_PAGE_SIZE")

    def _send(self, request: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request).encode() + b"\n")

    def watch(self, command: str, rate: float) -> None:
        self.watching[command] = rate
        self._send({"op": "watch", "command": command, "rate": rate})

    def unwatch(self, command: str) -> None:
        self.watching.pop(command, None)
        self._send({"op": "unwatch", "command": command})

    def unwatch_all(self) -> None:
        self.watching.clear()
        self._send({"op": "unwatch_all"})

    def pause(self, paused: bool) -> None:
        self._send({"op": "pause", "paused": paused})

    async def query(self, command: str) -> dict[str, Any]:
        """The encoded answer (`{"value", "unit", "time", "command"}`) to one command."""
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self._send({"op": "query", "id": rid, "command": command})
            return await future
        finally:
            self._pending.pop(rid, None)

    async def reports(self) -> AsyncIterator[tuple[str, Any]]:
        """("value", (name, payload bytes)), ("state", str), ("supported", set of names) until the worker
        ends, then WorkerError. Query replies are taken here and handed to their callers."""
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            kind, _, rest = line.rstrip(b"\n").partition(b" ")
            if kind == b"value":
                name, _, payload = rest.partition(b" ")
                yield "value", (name.decode(), payload)
            elif kind == b"reply":
                self._settle(json.loads(rest))
            elif kind == b"state":
                yield "state", json.loads(rest)
            elif kind == b"supported":
                yield "supported", set(json.loads(rest))
            elif kind == b"failed":
                raise WorkerError(f"adapter worker failed: {json.loads(rest)}")
        with contextlib.suppress(ProcessLookupError):
            await self._proc.wait()
        raise WorkerError(f"adapter worker ended (exit status {self._proc.returncode})")

    def _settle(self, reply: dict[str, Any]) -> None:
        future = self._pending.get(reply["id"])
        if future is None or future.done():
            return  # its caller gave up waiting
        if reply["ok"]:
            future.set_result(reply["result"])
        else:
            future.set_exception(WorkerError(reply["error"], link_down=reply.get("link", False)))
