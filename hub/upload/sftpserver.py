"""A real SFTP server, asyncssh's, in the caller's event loop: the NAS of `fleet sim`, the upload tests and bench.

`SftpServer(root, exec_sha256=True, rate=None)`: key auth only (a fresh client key, written to
`client_key`), a fresh host key (its line in `known_hosts`), SFTP chrooted to `root`. With
`exec_sha256` the server runs `sha256sum PATH` over an exec channel (paths inside `root`), like a NAS
with a shell; without it every exec request is refused, like an SFTP-only account. `rate` throttles
writes to that many bytes/s across all clients (a slow link, for the hard-deadline tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
from pathlib import Path
from typing import Any

import asyncssh


class SftpServer:
    def __init__(self, root: Path, *, exec_sha256: bool = True, rate: float | None = None,
                 keys: Path | None = None) -> None:
        self.root = Path(root)
        self.keys = Path(keys or self.root.parent / f"{self.root.name}-keys")
        self.exec_sha256 = exec_sha256
        self.rate = rate
        self.port = 0
        self.client_key = self.keys / "client_key"
        self.known_hosts = self.keys / "known_hosts"
        self.received = 0  # bytes of SFTP writes served
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._free_at = 0.0  # when the throttled link is free again

    async def start(self, port: int = 0) -> SftpServer:
        """Listen (on a free port, or `port`: the same server back after `close`, with the same keys)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.keys.mkdir(parents=True, exist_ok=True)
        host_file = self.keys / "host_key"
        if not host_file.exists():
            asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(host_file))
            asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(self.client_key))
            self.client_key.chmod(0o600)
        host_key = asyncssh.read_private_key(str(host_file))
        client = asyncssh.read_private_key(str(self.client_key))
        authorized = asyncssh.import_authorized_keys(client.export_public_key().decode())
        server = self

        class Sftp(asyncssh.SFTPServer):
            def __init__(self, chan: asyncssh.SSHServerChannel) -> None:
                super().__init__(chan, chroot=str(server.root).encode())

            async def write(self, file_obj: object, offset: int, data: bytes) -> int:
                await server._throttle(len(data))
                server.received += len(data)
                return super().write(file_obj, offset, data)  # type: ignore[arg-type, return-value]

        self._acceptor = await asyncssh.listen(
            "127.0.0.1", port, server_host_keys=[host_key], authorized_client_keys=authorized,
            sftp_factory=Sftp, allow_scp=False,
            process_factory=self._exec if self.exec_sha256 else None,
            password_auth=False, kbdint_auth=False)
        self.port = self._acceptor.sockets[0].getsockname()[1]
        pub = host_key.export_public_key().decode().strip()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub}\n")
        return self

    async def _throttle(self, n: int) -> None:
        if not self.rate:
            return
        now = asyncio.get_running_loop().time()
        self._free_at = max(now, self._free_at) + n / self.rate
        await asyncio.sleep(self._free_at - now)

    async def _exec(self, process: asyncssh.SSHServerProcess[Any]) -> None:
        """`sha256sum PATH…` as coreutils does it: a line per file it read, exit 1 if one could not be."""
        args = shlex.split(process.command or "")
        if len(args) < 2 or args[0] != "sha256sum":
            process.stderr.write(f"{args[:1]}: command not found\n")
            process.exit(127)
            return
        status = 0
        for name in args[1:]:
            try:
                digest = await asyncio.to_thread(_sha256, self.root / name.lstrip("/"))
            except OSError as exc:
                process.stderr.write(f"sha256sum: {name}: {exc.strerror}\n")
                status = 1
                continue
            process.stdout.write(f"{digest}  {name}\n")
        process.exit(status)

    def target_config(self, **extra: Any) -> dict[str, Any]:
        """The `upload.targets.<name>` section of hub.hjson for this server."""
        return {"type": "sftp", "host": "127.0.0.1", "port": self.port, "user": "car",
                "key": str(self.client_key), "known_hosts": str(self.known_hosts), **extra}

    async def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
