"""`fleet node run`: a virtual node, the node code under the MicroPython unix port, supervised like a board.

The VM runs the filesystem folder's `main.py` (or `firmware/device/main.py` when the folder has none)
with that folder as its working directory and first on its path. The broker, topic root and device id
reach the node as FLEET_BROKER, FLEET_HOME and FLEET_NODE_ID. A reset (exit status 3, from
`machine.reset()` on a board) starts the VM again at once; a crash or a kill (the software watchdog)
starts it again after a back-off; exit status 0 (a node stopped on purpose) ends the supervisor.

With `--pty`, the VM's console is a pseudo-terminal and its REPL is reachable on a stable path (a
symlink that survives VM restarts): `mpremote connect <path> resume exec "…"`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import termios
import tty
from collections.abc import Callable
from pathlib import Path

from fleet import topics
from fleet.mqtt import BrokerSettings, add_broker_arguments, settings_from_args
from fleet.upy import REPO, MicroPython, MicroPythonError

RESET = 3  # pysmartnode.node.RESET
DEVICE_MAIN = REPO / "firmware" / "device" / "main.py"


class VirtualNode:
    """One supervised virtual node. `async with VirtualNode(fs, "n1", settings) as vn: await vn.wait_for(…)`."""

    def __init__(self, fs: Path, node_id: str, settings: BrokerSettings | None = None, heap: str = "256K",
                 pty: Path | None = None, source_tree: bool = True, env: dict[str, str] | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        if why := topics.check_device_id(node_id):
            raise ValueError(why)
        self.fs = Path(fs).absolute()  # the VM runs in it: a relative path on MICROPYPATH would miss lib/
        self.id = node_id
        self.settings = settings
        self.pty_path = pty
        self.echo = echo
        env = dict(env or {})
        env["FLEET_NODE_ID"] = node_id
        if settings:
            env.update(FLEET_BROKER=settings.url, FLEET_HOME=settings.home)
            # --ca/--cert/--key reach the node too, as absolute paths (the VM runs in `fs`)
            for name, path in (("FLEET_CA", settings.ca), ("FLEET_CERT", settings.cert), ("FLEET_KEY", settings.key)):
                if path:
                    env[name] = str(Path(path).absolute())
        self.vm = MicroPython(self.fs, heap=heap, source_tree=source_tree, env=env)
        self.lines: list[str] = []
        self.boots = 0
        self.exits: list[int] = []
        self._new = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[int] | None = None
        self._stopping = False
        self._bridge: _PtyBridge | None = None

    async def __aenter__(self) -> VirtualNode:
        self.fs.mkdir(parents=True, exist_ok=True)
        if self.pty_path:
            self._bridge = _PtyBridge(self.pty_path, self._line)
        # Started here; ends when the VM exits with 0 or stop() is called.
        self._task = asyncio.create_task(self.supervise(), name=f"vnode-{self.id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stopping = True
        await self._kill(signal.SIGTERM)
        if self._task:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._bridge:
            self._bridge.close()

    async def kill(self) -> None:
        """SIGKILL the VM, as a power cut would end a board; the supervisor boots it again."""
        await self._kill(signal.SIGKILL)

    async def power_off(self) -> None:
        """SIGKILL the VM and boot it no more, as a board unplugged (`fleet sim`'s `node: … do: kill`)."""
        self._stopping = True
        await self._kill(signal.SIGKILL)
        await self.stop()

    async def _kill(self, sig: int) -> None:
        p = self._proc
        if p and p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                await asyncio.wait_for(p.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                await p.wait()

    def _command(self) -> list[str]:
        script = "main.py" if (self.fs / "main.py").exists() else str(DEVICE_MAIN)
        cmd = self.vm.command(script)
        if self._bridge:
            cmd.insert(-1, "-i")  # after ^C stops main.py, the REPL, as on a board
        return cmd

    def _line(self, line: str) -> None:
        self.lines.append(line)
        self._new.set()
        if self.echo:
            self.echo(line)

    async def supervise(self) -> int:
        backoff = 1.0
        while not self._stopping:
            self.boots += 1
            self._line(f"[vnode] boot {self.boots}: {' '.join(self._command())}")
            loop = asyncio.get_running_loop()
            started = loop.time()
            if self._bridge:
                stdin = stdout = self._bridge.new_console()
            else:
                stdin, stdout = asyncio.subprocess.DEVNULL, asyncio.subprocess.PIPE
            self._proc = await asyncio.create_subprocess_exec(
                *self._command(), cwd=self.fs, env=self.vm.environ(), stdin=stdin,
                stdout=stdout, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                preexec_fn=_take_console if self._bridge else None)
            if self._bridge:
                self._bridge.started()
                rc = await self._proc.wait()
            else:
                assert self._proc.stdout is not None
                async for raw in self._proc.stdout:
                    self._line(raw.decode(errors="replace").rstrip("\n"))
                rc = await self._proc.wait()
            self.exits.append(rc)
            self._line(f"[vnode] exit {rc}")
            if self._stopping or rc == 0:
                return rc
            if rc == RESET:
                backoff = 1.0
                continue
            if loop.time() - started > 30:
                backoff = 1.0  # it ran a while: this crash is not part of a crash loop
            self._line(f"[vnode] crashed: boot again in {backoff:.0f} s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
        return 0

    def mark(self) -> int:
        return len(self.lines)

    async def wait_for(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """The first output line from index `start` on that matches `pattern`."""
        rx = re.compile(pattern)
        i = start

        async def scan() -> re.Match[str]:
            nonlocal i
            while True:
                self._new.clear()
                while i < len(self.lines):
                    if m := rx.search(self.lines[i]):
                        return m
                    i += 1
                await self._new.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise MicroPythonError(f"{self.id}: timed out waiting for /{pattern}/", "\n".join(self.lines)) from None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _take_console() -> None:
    """In the child: make its stdin (the pty) the controlling terminal, so ^C reaches the VM as SIGINT."""
    import fcntl
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _PtyBridge:
    """The REPL's stable path: a pty whose slave is `path` (a symlink), bridged byte for byte to the
    console pty of whichever VM currently runs. Output is also split into lines for the log."""

    def __init__(self, path: Path, on_line: Callable[[str], None]) -> None:
        self.path = Path(path)
        self.on_line = on_line
        self.outer, outer_slave = os.openpty()
        tty.setraw(outer_slave)
        self._outer_slave = outer_slave  # kept open so the path works while no client is attached
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.symlink_to(os.ttyname(outer_slave))
        self.inner: int | None = None
        self._inner_slave: int | None = None
        self._buf = b""
        loop = asyncio.get_running_loop()
        loop.add_reader(self.outer, self._from_client)

    def new_console(self) -> int:
        if self.inner is not None:
            asyncio.get_running_loop().remove_reader(self.inner)
            os.close(self.inner)
        self.inner, slave = os.openpty()
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        attrs[3] |= termios.ISIG  # raw, but ^C still interrupts main.py as on a board's UART
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self._inner_slave = slave
        return slave

    def started(self) -> None:
        if self._inner_slave is not None:
            os.close(self._inner_slave)  # the child holds it now
            self._inner_slave = None
        assert self.inner is not None
        asyncio.get_running_loop().add_reader(self.inner, self._from_vm)

    def _from_client(self) -> None:
        try:
            data = os.read(self.outer, 4096)
        except OSError:
            return
        if self.inner is not None:
            with contextlib.suppress(OSError):
                os.write(self.inner, data)

    def _from_vm(self) -> None:
        assert self.inner is not None
        try:
            data = os.read(self.inner, 4096)
        except OSError:  # the VM exited: its pty is gone
            asyncio.get_running_loop().remove_reader(self.inner)
            return
        with contextlib.suppress(OSError):
            os.write(self.outer, data)
        self._buf += data
        *done, self._buf = self._buf.split(b"\n")
        for raw in done:
            self.on_line(raw.decode(errors="replace").rstrip("\r"))

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in (self.outer, self.inner):
            if fd is not None:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(OSError):
            os.close(self._outer_slave)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def parse_heap(text: str) -> str:
    if not re.fullmatch(r"\d+[kKmM]?", text):
        raise argparse.ArgumentTypeError(f"heap {text!r}: a size like 64k, 256K or 1M")
    return text.upper()


async def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    pty = Path(args.pty_path or Path(args.fs).resolve().parent / f"{args.id}.pty") if args.pty else None
    vn = VirtualNode(Path(args.fs), args.id, settings, heap=args.heap, pty=pty, source_tree=not args.bare,
                     echo=lambda line: print(f"{args.id}| {line}", flush=True))
    async with vn:
        if pty:
            print(f"{args.id}| REPL on {pty}: mpremote connect {pty} resume repl", flush=True)
        assert vn._task is not None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # the VM runs in a session of its own: stop it here
            loop.add_signal_handler(sig, stop.set)
        # Started here; ends when the supervisor is told to stop (a signal).
        stopper = asyncio.create_task(stop.wait(), name=f"vnode-{args.id}-signals")
        done, _ = await asyncio.wait({vn._task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        return vn._task.result() if vn._task in done else 0


def register(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = verbs.add_parser("run", help="run one virtual node, restarted on every reset like a board",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--id", required=True, help="device id ([a-z0-9_-]{1,32})")
    run.add_argument("--fs", required=True, help="folder that plays the node's filesystem (created if missing)")
    run.add_argument("--heap", type=parse_heap, default="256K", help="MicroPython heap (default %(default)s)")
    run.add_argument("--pty", action="store_true", help="expose the REPL on a stable pty path")
    run.add_argument("--pty-path", help="where the pty symlink goes (default: next to --fs, <id>.pty)")
    run.add_argument("--bare", action="store_true", help="the folder alone on the path, as on a flashed board "
                     "(no source tree): a blank device for `fleet firmware deploy`")
    add_broker_arguments(run)

    def handler(args: argparse.Namespace) -> int:
        if why := topics.check_device_id(args.id):
            print(why, file=sys.stderr)
            return 2
        return asyncio.run(_run(args))

    run.set_defaults(func=handler)
