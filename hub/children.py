"""The hub's child processes (the camera's recorder, the OBD worker): how one is let go."""

from __future__ import annotations

import asyncio
import logging


async def end_child(proc: asyncio.subprocess.Process, timeout: float, log: logging.Logger, what: str) -> None:
    """Wait up to `timeout` for a child that was asked to end, then kill it (logged).

    `asyncio.timeout` rather than `wait_for`: on Python 3.11 `wait_for` can swallow a cancellation
    that arrives as the wait ends, leaving the caller running after its job was cancelled.
    """
    try:
        async with asyncio.timeout(timeout):
            await proc.wait()
    except TimeoutError:
        log.warning("%s %d did not end within %.0f s: killed", what, proc.pid, timeout)
        proc.kill()
        await proc.wait()
