"""Upload throughput against a plain asyncssh SFTP put, and the time from key-off to latch release.

    .venv/bin/python bench/hub_upload.py [--files 8] [--mb 32] [--rounds 3] [--backlog 0,64,256]
                                         [--server openssh,asyncssh]

Servers, each a process of its own as a NAS would be: OpenSSH (`sshd -D` on a free loopback port, its
`sftp-server`, `sha256sum` over exec: a shell per exec, so the login shell's rc files count), and the
asyncssh server of the tests (`tests/sftpserver.py`, sha256 in-process), also throttled to a link speed:
on loopback the server's sha256 competes for this machine's 2 cores with both ends' encryption, on a
real link it overlaps the next file's transfer.

1. Throughput: the same files, to the same server, in the same run, alternating: a plain
   `SFTPClient.put` of the list (asyncssh's parallel writes, no checks), then our uploader (durable
   queue, `.part` + rename, checkpoints, verification by the server's `sha256sum`, then size-only).
   The files' sha256 is given when queued, as the camera announces it. Best of `--rounds`.
2. Key-off → latch release: `fleet hub run` (a process of its own, upload + power + rules, mock pins)
   against Mosquitto; a backlog of N MB is queued and the ignition pin driven low right after; the time
   is from that publish until the latch pin's level is 0 (debounce 0; key-off rule: upload.wait_empty,
   power.shutdown (`true`), power.release; no camera in this bench).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncssh
from hub_common import REPO, client, hub_process

from hub.upload.queue import Queue
from hub.upload.sftp import SftpTarget
from hub.upload.transfer import sha256_of
from hub.upload.uploader import Uploader


class Server:
    """An SFTP server process; `target(name)` is an upload target writing into its folder `name`."""

    label = ""
    port = 0
    user = ""
    keys = Path()
    proc: subprocess.Popen[bytes]

    def remote(self, name: str) -> str:
        """The folder `name` as the server's SFTP sees it."""
        raise NotImplementedError

    def target(self, name: str, **extra: object) -> dict[str, object]:
        return {"type": "sftp", "host": "127.0.0.1", "port": self.port, "user": self.user,
                "key": str(self.keys / "client_key"), "known_hosts": str(self.keys / "known_hosts"),
                "path": f"{self.remote(name)}/{{hub}}", **extra}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class Sshd(Server):
    """OpenSSH's sshd on a free loopback port, key auth for the current user only."""

    label = "OpenSSH sftp-server"

    def __init__(self, folder: Path) -> None:
        self.keys = self.folder = folder
        self.user = os.environ.get("USER", "root")
        folder.mkdir(parents=True, exist_ok=True)
        host = asyncssh.generate_private_key("ssh-ed25519")
        user = asyncssh.generate_private_key("ssh-ed25519")
        host.write_private_key(str(folder / "host_key"))
        user.write_private_key(str(folder / "client_key"))
        for name in ("host_key", "client_key"):
            (folder / name).chmod(0o600)
        (folder / "authorized_keys").write_bytes(user.export_public_key())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (folder / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host.export_public_key().decode()}")
        (folder / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {folder}/host_key
PidFile none
AuthorizedKeysFile {folder}/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel ERROR
""")
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation folder sshd insists on
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(folder / "sshd_config")],
                                     stderr=subprocess.DEVNULL)  # port probes make it say "connection closed"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("sshd did not start") from None
                time.sleep(0.01)

    def remote(self, name: str) -> str:
        return str(self.folder.parent / name)


class AsyncsshServer(Server):
    """tests/sftpserver.py as a process of its own, chrooted to `root`."""

    def __init__(self, root: Path, link: float | None = None) -> None:
        self.label = "asyncssh server" + (f" behind a {link:g} MB/s link" if link else "")
        rate = ["--rate", str(link * 1e6)] if link else []
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "sftpserver.py"), str(root), *rate],
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        conf = json.loads(self.proc.stdout.readline())
        self.port, self.user = conf["port"], conf["user"]
        self.keys = Path(conf["key"]).parent

    def remote(self, name: str) -> str:
        return name


async def exec_round_trip(server: Server) -> float:
    """Seconds for one exec channel (`true`): what each sha256 verification pays on top of the hashing."""
    async with asyncssh.connect("127.0.0.1", server.port, username=server.user,
                                client_keys=[str(server.keys / "client_key")],
                                known_hosts=str(server.keys / "known_hosts")) as conn:
        t0 = time.perf_counter()
        for _ in range(5):
            await conn.run("true", check=False)
        return (time.perf_counter() - t0) / 5


async def plain_put(server: Server, files: list[Path], name: str) -> float:
    async with asyncssh.connect("127.0.0.1", server.port, username=server.user,
                                client_keys=[str(server.keys / "client_key")],
                                known_hosts=str(server.keys / "known_hosts")) as conn, \
            conn.start_sftp_client() as sftp:
        await sftp.makedirs(server.remote(name), exist_ok=True)
        t0 = time.perf_counter()
        await sftp.put([str(f) for f in files], server.remote(name))
        took = time.perf_counter() - t0
        await sftp.rmtree(server.remote(name))
        return took


async def ours(server: Server, files: list[Path], digests: dict[Path, str], name: str, work: Path,
               verify: str) -> tuple[float, set[str]]:
    db = work / f"q-{time.monotonic_ns()}.db"
    target = SftpTarget("nas", **server.target(name, verify=verify))  # type: ignore[arg-type]
    with Queue(db) as queue:
        up = Uploader(queue, {"nas": target}, hub_id="bench", log=logging.getLogger("bench"))
        await target.open()  # connected, as the plain put is: the transfer is what is timed
        t0 = time.perf_counter()
        for f in files:
            up.add(f, f.stat().st_size, digests[f])
        task = asyncio.create_task(up.run(), name="bench-uploader")
        result = await up.wait_empty()
        took = time.perf_counter() - t0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert result == "empty", result
        how = {str(r["verified"]) for r in queue.rows()}
        await target.open()  # the idle worker has let go of it
        assert target._sftp is not None
        await target._sftp.rmtree(server.remote(name))
        await target.close()
    return took, how


async def throughput(server: Server, work: Path, n: int, mb: int, rounds: int) -> None:
    src = work / "src"
    src.mkdir(exist_ok=True)
    files = []
    for i in range(n):
        f = src / f"loop.20261121T060000Z.b1.{i}.mp4"
        f.write_bytes(os.urandom(mb << 20))
        files.append(f)
    digests = {f: sha256_of(f) for f in files}
    total = n * (mb << 20)
    best: dict[str, float] = {}
    for r in range(rounds):
        for name in ("plain", "sha256", "size"):
            if name == "plain":
                took = await plain_put(server, files, f"remote-{name}-{r}")
            else:
                took, how = await ours(server, files, digests, f"remote-{name}-{r}", work, name)
                assert how == {name}, how
            best[name] = min(best.get(name, took), took)
    print(f"throughput, {n} files × {mb} MiB to {server.label} on loopback (best of {rounds}; "
          f"one exec round trip {await exec_round_trip(server) * 1000:.0f} ms):")
    for name, label in (("plain", "plain asyncssh put"), ("sha256", "uploader, verified by sha256"),
                        ("size", "uploader, verified by size")):
        print(f"  {label:32} {total / best[name] / 1e6:7.1f} MB/s  ratio {best['plain'] / best[name]:.2f}")


KEYOFF_HUB = """{
  id: bench
  workdir: WORKDIR
  jobs: ["upload", "power", "rules"]
  upload: { targets: { nas: TARGET }, progress: 0.5, scan: [] }
  power: { pin_factory: "mock", debounce: 0, deadline: 600, shutdown: ["true"] }
  rules: {
    key_off: {
      on: power.ignition_off
      cancel: power.ignition_on
      do: ["upload.wait_empty", "power.shutdown", "power.release"]
    }
  }
}"""


def key_off(server: Server, work: Path, backlogs: list[int]) -> None:
    print(f"key-off → latch release (fleet hub run: upload + power + rules; backlog queued at key-off; "
          f"{server.label}):")
    for mb in backlogs:
        src = work / f"backlog-{mb}"
        src.mkdir()
        files = []
        for i in range(max(1, mb // 16) if mb else 0):
            f = src / f"loop.20261121T070000Z.b1.{i}.mp4"
            f.write_bytes(os.urandom(min(16, mb) << 20))
            files.append(f)
        hub = KEYOFF_HUB.replace("TARGET", json.dumps(server.target(f"remote-keyoff-{mb}")))
        with hub_process(hub) as (broker, _):
            c = client(broker, "keyoff")
            released = threading.Event()
            c.on_message = lambda _c, _u, msg, released=released: released.set() if msg.payload == b"0" else None
            c.subscribe("bench/_sim/bench/pin27/level")
            c.loop_start()
            time.sleep(0.5)  # the retained level 1 has come; the jobs are subscribed
            for f in files:
                c.publish("bench/bench/upload/set", json.dumps({"add": str(f)}), qos=1)
            t0 = time.perf_counter()
            c.publish("bench/_sim/bench/pin17/set", "0", qos=1)
            if not released.wait(600):
                raise SystemExit("the latch was not released")
            took = time.perf_counter() - t0
            c.loop_stop()
            c.disconnect()
        print(f"  backlog {mb:5d} MB ({len(files)} files): released after {took:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mb", type=int, default=32, help="MiB per file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", default="0,64,256", help="key-off backlogs in MB, comma-separated")
    parser.add_argument("--server", default="openssh,asyncssh,link", help="openssh, asyncssh and/or link "
                        "(the asyncssh server throttled to --link MB/s, as a home network would be)")
    parser.add_argument("--link", type=float, default=25.0, help="MB/s of the link server (default %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="upload-bench-") as tmp:
        work = Path(tmp)
        for kind in args.server.split(","):
            server = Sshd(work / "sshd") if kind == "openssh" else AsyncsshServer(
                work / kind, args.link if kind == "link" else None)
            try:
                asyncio.run(throughput(server, work, args.files, args.mb, args.rounds))
                if kind == args.server.split(",")[0]:
                    key_off(server, work, [int(x) for x in args.backlog.split(",") if x.strip()])
            finally:
                server.close()


if __name__ == "__main__":
    main()
