"""SFTP target over asyncssh: key auth, the server's host key checked against a known_hosts file.

A file goes to `<remote>.part` and is renamed to `<remote>` only after it is verified, so a reader
never sees half a file and a name never holds two versions. After a crash the part file is cut back to
the last offset the queue recorded (everything before it was acknowledged) and continued from there;
when the server runs `sha256sum` over an exec channel, the part's hash is checked against the same
prefix of the local file first, and a mismatch replaces it. Verification: size always, plus the
server's `sha256sum` of the whole file where exec is allowed (`verify: auto`); the result says which.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import posixpath
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh

from hub.upload import UploadError
from hub.upload.transfer import Transfer

VERIFY = ("auto", "sha256", "size")
IN_FLIGHT = 2  # chunk writes outstanding at once


class SftpTarget:
    """`SftpTarget(name, host=…, user=…, key=…, known_hosts=…, [port, path, verify, timeout])`; `path` is
    the remote folder (relative to the login folder, or absolute), `{hub}` and `{date}` allowed."""

    kind = "sftp"

    def __init__(self, name: str, *, host: str, user: str, key: str, known_hosts: str, port: int = 22,
                 path: str = "{hub}", verify: str = "auto", timeout: float = 10.0,
                 **_: Any) -> None:
        self.name = name
        self.host, self.port, self.user = host, int(port), user
        self.key, self.known_hosts = str(Path(key).expanduser()), str(Path(known_hosts).expanduser())
        self.template = path.rstrip("/") + "/{name}"  # `path` is the folder: names never collide
        self.verify = verify
        self.timeout = float(timeout)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._exec: bool | None = None  # does the server run sha256sum? None until tried

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def open(self) -> None:
        """Connect (if not connected). UploadError(reachable=False) when the server cannot be reached;
        a host key that does not match known_hosts, or a refused key, is reachable=True (retrying will
        not help until someone fixes it, but the target is there)."""
        if self._sftp is not None:
            return
        try:
            self._conn = await asyncssh.connect(
                self.host, self.port, username=self.user, client_keys=[self.key], known_hosts=self.known_hosts,
                connect_timeout=self.timeout, keepalive_interval=15, agent_path=None, config=None)
            self._sftp = await self._conn.start_sftp_client()
        except (OSError, TimeoutError, asyncssh.ConnectionLost) as exc:
            await self.close()
            raise UploadError(self.name, f"cannot connect to {self.host}:{self.port}: {exc}", reachable=False) \
                from exc
        except asyncssh.Error as exc:
            await self.close()
            raise UploadError(self.name, f"{self.host}:{self.port} refused us: {exc.reason}") from exc

    async def close(self) -> None:
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()

    async def upload(self, t: Transfer) -> str:
        """Put the file, verify it, rename it into place; the verification done (`sha256` or `size`)."""
        (result,) = await self.finish([(t, await self.send(t))])
        if isinstance(result, UploadError):
            raise result
        return result

    async def send(self, t: Transfer) -> str:
        """Write the file to `<remote>.part` (continuing a partial one); the remote path now holding it.
        The uploader goes on sending while `finish` checks what was sent."""
        async with self._errors(t):
            await self.open()
            assert self._sftp is not None  # set by open()
            return await self._send(self._sftp, t)

    async def finish(self, items: list[tuple[Transfer, str]]) -> list[str | UploadError]:
        """Verify what `send` wrote (one `sha256sum` for all of them) and rename each into place; per file
        the verification done, or why it failed. A lost connection fails them all (raised)."""
        async with self._errors(items[0][0]):
            await self.open()
            sftp = self._sftp
            assert sftp is not None
            for t, held in items:
                if held != t.remote:  # on the server's disk before it counts as uploaded
                    async with sftp.open(held, "r+b") as f:
                        with contextlib.suppress(asyncssh.SFTPOpUnsupported):  # fsync@openssh.com: an extension
                            await f.fsync()
            digests = await self._hashes([held for _, held in items])
            results: list[str | UploadError] = []
            for t, held in items:
                try:
                    verified = await self._verdict(held, t, digests)
                    if not verified:
                        t.checkpoint(0)  # the part is wrong: the next attempt replaces it
                        raise UploadError(self.name, f"{held}: verification failed after upload")
                    if held != t.remote:
                        await _rename_over(sftp, held, t.remote)
                    results.append(verified)
                except UploadError as exc:
                    results.append(exc)
                except asyncssh.SFTPError as exc:
                    results.append(UploadError(self.name, f"{t.remote}: {exc.reason}"))
            return results

    @contextlib.asynccontextmanager
    async def _errors(self, t: Transfer) -> AsyncIterator[None]:
        try:
            yield
        except (OSError, asyncssh.ConnectionLost, asyncssh.DisconnectError) as exc:
            await self.close()
            raise UploadError(self.name, f"connection lost during {t.remote}: {exc}", reachable=False) from exc
        except asyncssh.SFTPError as exc:
            raise UploadError(self.name, f"{t.remote}: {exc.reason}") from exc

    async def _send(self, sftp: asyncssh.SFTPClient, t: Transfer) -> str:
        final, part = t.remote, t.remote + ".part"
        # renamed already (a crash after the rename, before the queue heard of it)? then verify only
        if await _size(sftp, final) == t.size and await self._verified(final, t):
            return final
        offset = await self._resume_offset(sftp, part, t)
        folder = posixpath.dirname(final)
        if folder:
            await sftp.makedirs(folder, exist_ok=True)
        async with sftp.open(part, "r+b" if offset else "wb") as f:
            if offset:
                await f.truncate(offset)
            t.checkpoint(offset)
            # two chunks in flight, so the link never idles between them; a chunk counts (progress and
            # checkpoint) only once it and every chunk before it are acknowledged: no gap after a crash
            flying: collections.deque[tuple[asyncio.Future[int], int]] = collections.deque()
            try:
                async for pos, data in t.chunks(offset):
                    flying.append((asyncio.ensure_future(f.write(data, pos)), pos + len(data)))
                    if len(flying) == IN_FLIGHT:
                        await self._landed(flying, t)
                while flying:
                    await self._landed(flying, t)
            finally:
                for write, _ in flying:
                    write.cancel()
        return part

    @staticmethod
    async def _landed(flying: collections.deque[tuple[asyncio.Future[int], int]], t: Transfer) -> None:
        write, end = flying[0]
        await write
        flying.popleft()
        t.progress(end)
        t.checkpoint(end)

    async def _resume_offset(self, sftp: asyncssh.SFTPClient, part: str, t: Transfer) -> int:
        """Where to continue `part`: the queue's checkpoint, if the remote holds that much and (where the
        server can hash) those bytes match the local file; else 0 (replace)."""
        have = await _size(sftp, part)
        offset = min(have or 0, t.item.offset, t.size)
        if offset and self.verify != "size" and self._exec is not False:
            # the remote part may run past the checkpoint: hash exactly the checkpointed prefix
            async with sftp.open(part, "r+b") as f:
                await f.truncate(offset)
            remote = await self._hash(part)
            if remote is not None and remote != await t.prefix_sha256(offset):
                return 0
        return offset

    async def _verified(self, path: str, t: Transfer) -> str | None:
        return await self._verdict(path, t, await self._hashes([path]))

    async def _verdict(self, path: str, t: Transfer, digests: dict[str, str] | None) -> str | None:
        """`sha256` or `size` when `path` holds the file, None when it does not. `digests`: the server's
        sha256 by path, None when it does not run sha256sum."""
        assert self._sftp is not None
        if await _size(self._sftp, path) != t.size:
            return None
        if digests is not None:
            return "sha256" if digests.get(path) == t.item.sha256 else None
        if self.verify == "sha256":
            raise UploadError(self.name, f"{self.host} does not run sha256sum and verify is 'sha256'")
        return "size"

    async def _hash(self, path: str) -> str | None:
        digests = await self._hashes([path])
        return digests.get(path) if digests else None

    async def _hashes(self, paths: list[str]) -> dict[str, str] | None:
        """The server's `sha256sum` of `paths`, one exec for all (each exec can cost a login shell): path
        → hex digest (a path it could not read is missing). None when the server does not run it
        (remembered for this server) or `verify` is `size`."""
        if self.verify == "size" or self._exec is False:
            return None
        assert self._conn is not None
        try:
            result = await self._conn.run("sha256sum " + " ".join(shlex.quote(p) for p in paths), check=False,
                                          timeout=600)
        except (asyncssh.ChannelOpenError, asyncssh.ProcessError):
            result = None
        out = result.stdout if result is not None and isinstance(result.stdout, str) else ""
        digests = {}
        for line in out.splitlines():
            digest, _, name = line.partition("  ")
            if len(digest) == 64 and name in paths:
                digests[name] = digest.lower()
        if result is None or result.exit_status not in (0, 1):
            self._exec = False  # no sha256sum there: exec refused, or not found (127)
            return None
        self._exec = True
        return digests


async def _size(sftp: asyncssh.SFTPClient, path: str) -> int | None:
    try:
        return (await sftp.stat(path)).size
    except asyncssh.SFTPNoSuchFile:
        return None


async def _rename_over(sftp: asyncssh.SFTPClient, src: str, dst: str) -> None:
    """Rename replacing `dst`: atomically where the server has posix-rename, else remove then rename."""
    try:
        await sftp.posix_rename(src, dst)
    except asyncssh.SFTPOpUnsupported:
        if await _size(sftp, dst) is not None:
            await sftp.remove(dst)
        await sftp.rename(src, dst)
