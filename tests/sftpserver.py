"""The SFTP server of the upload tests and bench: `hub.upload.sftpserver` (shared with `fleet sim`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hub.upload.sftpserver import SftpServer

__all__ = ["SftpServer", "sftp_servers"]


@pytest.fixture(name="sftp")
async def sftp_servers(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[SftpServer]]]:
    """`await sftp(**opts)`: a started SftpServer in this test's folder, closed at teardown.
    A test module takes it with `from sftpserver import sftp_servers`."""
    servers: list[SftpServer] = []

    async def make(**opts: Any) -> SftpServer:
        server = await SftpServer(tmp_path / f"nas{len(servers)}", **opts).start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        await s.close()


async def _serve(root: Path, exec_sha256: bool, rate: float | None) -> None:
    server = await SftpServer(root, exec_sha256=exec_sha256, rate=rate).start()
    print(json.dumps(server.target_config()), flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    # `python tests/sftpserver.py ROOT [--no-exec] [--rate BYTES_PER_S]`: the server as a process of its own
    # (bench/hub_upload.py); prints its target config as one JSON line, serves until killed.
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("--no-exec", action="store_true")
    p.add_argument("--rate", type=float)
    a = p.parse_args()
    asyncio.run(_serve(a.root, not a.no_exec, a.rate))
