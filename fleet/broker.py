"""The broker runner: a real Mosquitto from a generated config, or the embedded amqtt broker.

Mosquitto runs in the foreground as a child and is stopped by PID. As root it drops to the user
`mosquitto`, so every file it reads is made readable by that user. When no `mosquitto` binary is
found, an amqtt broker runs in-process, on a thread with its own event loop, so the same
start()/stop() serves tests, `fleet broker run` and `fleet sim` alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import BrokerError

log = logging.getLogger("fleet.broker")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise BrokerError(f"mqtt://{host}:{port}", "broker exited while starting")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.005)
    raise BrokerError(f"mqtt://{host}:{port}", f"not listening after {timeout:.0f} s")


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


@dataclass
class TLSFiles:
    """A TLS listener: the broker's certificate and key, and the CA that signs client certificates."""

    cafile: str
    certfile: str
    keyfile: str
    require_certificate: bool = False


@dataclass
class Mosquitto:
    """A Mosquitto process on loopback. `with Mosquitto(workdir) as m: m.url`."""

    workdir: Path
    port: int = 0
    host: str = "127.0.0.1"
    persistence: bool = False
    password_file: str | None = None
    acl_file: str | None = None
    tls: TLSFiles | None = None
    tls_port: int = 0
    extra: list[str] = field(default_factory=list)  # raw config lines, e.g. a bridge section
    verbose: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _run: Path | None = field(default=None, init=False, repr=False)

    kind = "mosquitto"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://localhost:{self.tls_port}"

    def _rundir(self) -> Path:
        """Where config, log, persistence and copies of the auth files live.

        As root Mosquitto drops to the user `mosquitto`, which must reach this folder: when a parent
        of `workdir` is closed to others (pytest's temp folders are), a folder under /tmp is used.
        """
        if self._run is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            reachable = all(p.stat().st_mode & 0o001 for p in self.workdir.resolve().parents)
            self._run = self.workdir if os.geteuid() != 0 or reachable else Path(
                tempfile.mkdtemp(prefix="fleet-mosquitto-"))
            if os.geteuid() == 0:
                os.chmod(self._run, 0o755)
                with contextlib.suppress(KeyError):
                    import pwd

                    os.chown(self._run, pwd.getpwnam("mosquitto").pw_uid, -1)
        return self._run

    def _readable_copy(self, path: str) -> str:
        """A copy of an auth or TLS file that the broker user can read (the original may be mode 600)."""
        dst = self._rundir() / f"in-{Path(path).name}"
        shutil.copyfile(path, dst)
        self._broker_only(dst)
        return str(dst)

    def copy_in(self, path: str) -> str:
        """A copy of a file named in `extra` lines (a bridge's CA, certificate, key) the broker can read."""
        return self._readable_copy(path)

    @staticmethod
    def _broker_only(path: Path) -> None:
        """Mode 600, owned by the broker's user: these files hold keys and passwords (a bridge's too)."""
        if os.geteuid() == 0:  # Mosquitto started as root reads its files as the user `mosquitto`
            with contextlib.suppress(KeyError):
                import pwd

                os.chown(path, pwd.getpwnam("mosquitto").pw_uid, -1)
        os.chmod(path, 0o600)

    @property
    def log_path(self) -> Path:
        return self._rundir() / "mosquitto.log"

    def config_text(self) -> str:
        run = self._rundir()
        copy = self._readable_copy
        lines = ["per_listener_settings false", f"listener {self.port} {self.host}"]
        if self.tls:
            lines += [f"listener {self.tls_port} {self.host}", f"cafile {copy(self.tls.cafile)}",
                      f"certfile {copy(self.tls.certfile)}", f"keyfile {copy(self.tls.keyfile)}",
                      f"require_certificate {'true' if self.tls.require_certificate else 'false'}"]
        if self.password_file:
            lines += ["allow_anonymous false", f"password_file {copy(self.password_file)}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file:
            lines.append(f"acl_file {copy(self.acl_file)}")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {run}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        lines += ["max_queued_messages 10000", "log_type error", "log_type warning", "log_type notice",
                  f"log_dest file {self.log_path}", "connection_messages true"]
        if self.verbose:
            lines.append("log_type all")
        return "\n".join(lines + self.extra) + "\n"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        exe = find_mosquitto()
        if not exe:
            raise BrokerError(self.url, "no mosquitto binary found")
        if not self.port:
            self.port = free_port(self.host)
        if self.tls and not self.tls_port:
            self.tls_port = free_port(self.host)
        conf = self._rundir() / "mosquitto.conf"
        conf.write_text(self.config_text())
        self._broker_only(conf)
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.host, self.port, timeout, lambda: self.proc is not None and self.proc.poll() is None)
        except BrokerError as exc:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            logtext = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            self.stop()
            raise BrokerError(self.url, f"{exc.reason}: {err.strip()} {logtext.strip()[-500:]}") from None
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def close(self) -> None:
        """Stop for good and remove the folder made under /tmp, if one was."""
        self.stop()
        if self._run is not None and self._run != self.workdir:
            shutil.rmtree(self._run, ignore_errors=True)
        self._run = None

    def kill(self) -> None:
        """Stop at once, as a power cut would (SIGKILL)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class EmbeddedBroker:
    """amqtt in-process on its own thread and loop. MQTT 3.1.1 only, about 10k msg/s."""

    port: int = 0
    host: str = "127.0.0.1"
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _stopped: asyncio.Event | None = field(default=None, init=False)

    kind = "embedded"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._stopped = asyncio.Event()
        try:
            broker = Broker(config)
            await broker.start()
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        await self._stopped.wait()
        with contextlib.suppress(Exception):
            await broker.shutdown()

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        if not self.port:
            self.port = free_port(self.host)
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            # amqtt logs warnings on shutdown for messages it could not broadcast; they are expected.
            logging.getLogger("amqtt").setLevel(logging.ERROR)
            self._loop.run_until_complete(self._serve(ready, failure))
            self._loop.close()

        # Started by start(); ends when stop() sets _stopped.
        self._thread = threading.Thread(target=run, name=f"embedded-broker-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(timeout)
        if failure:
            raise BrokerError(self.url, f"embedded broker failed: {failure[0]}")
        wait_port(self.host, self.port, timeout)
        return self

    def stop(self) -> None:
        if self._loop and self._stopped and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_broker(workdir: Path | None = None, port: int = 0, prefer: str = "auto",
                 persistence: bool = False) -> Mosquitto | EmbeddedBroker:
    """Mosquitto if installed (or `prefer="mosquitto"`), else the embedded broker; started."""
    if prefer == "embedded" or (prefer == "auto" and not find_mosquitto()):
        return EmbeddedBroker(port=port).start()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fleet-broker-"))
    return Mosquitto(workdir, port=port, persistence=persistence).start()


# --- fleet broker … -----------------------------------------------------------------------------


def register(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = verbs.add_parser("run", help="run a broker on loopback (Mosquitto if installed, else embedded)")
    run.add_argument("--port", type=int, default=1883, help="port to listen on (default %(default)s; 0 = free)")
    run.add_argument("--kind", choices=("auto", "mosquitto", "embedded"), default="auto")
    run.add_argument("--dir", type=Path, help="folder for config, persistence and log (default: temp)")
    run.add_argument("--persistence", action="store_true", help="keep sessions and retained messages")
    run.add_argument("--password-file", help="Mosquitto password_file (from `fleet broker credentials`)")
    run.add_argument("--acl-file", help="Mosquitto acl_file (from `fleet broker credentials`)")
    run.add_argument("--tls-dir", type=Path, help="also listen with TLS, using the files of `fleet broker tls-init`")
    run.add_argument("--tls-port", type=int, default=8883, help="TLS port (default %(default)s)")
    run.set_defaults(func=_cmd_run)
    from fleet.security import register_verbs

    register_verbs(verbs)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.kind == "embedded" or (args.kind == "auto" and not find_mosquitto()):
        if args.password_file or args.acl_file or args.tls_dir:
            raise BrokerError("embedded", "credentials, ACLs and TLS need Mosquitto")
        broker: Mosquitto | EmbeddedBroker = EmbeddedBroker(port=args.port)
    else:
        workdir = args.dir or Path(tempfile.mkdtemp(prefix="fleet-broker-"))
        tls = None
        if args.tls_dir:
            d = args.tls_dir
            tls = TLSFiles(str(d / "ca.crt"), str(d / "broker.crt"), str(d / "broker.key"))
        broker = Mosquitto(workdir, port=args.port, persistence=args.persistence, password_file=args.password_file,
                           acl_file=args.acl_file, tls=tls, tls_port=args.tls_port if tls else 0)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with broker:
        also = f" and {broker.tls_url}" if isinstance(broker, Mosquitto) and broker.tls else ""
        print(f"{broker.kind} broker on {broker.url}{also} (Ctrl-C stops it)", flush=True)
        while not stop.wait(0.5):
            proc = getattr(broker, "proc", None)
            if proc is not None and proc.poll() is not None:
                print(f"mosquitto exited with {proc.returncode}; see {broker.log_path}")
                return 1
    return 0
