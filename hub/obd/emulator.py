"""The PyPI ELM327-emulator served on a free TCP port: the car of `fleet sim`, the OBD tests and the bench.

`python -m elm -s car -n PORT -b FILE </dev/null` runs the emulator in batch mode on loopback
(`-d` would write a global pidfile, so it is avoided). python-OBD reaches it as
`socket://127.0.0.1:PORT` with `baudrate=38400` and `protocol="6"`. The process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleet.broker import free_port, wait_port


@dataclass
class Emulator:
    """An ELM327 emulator process. `with Emulator(tmp) as elm: elm.url`; `stop()` then `start()` again
    serves the same port, as a car that went away and came back."""

    workdir: Path
    scenario: str = "car"
    port: int = 0
    # Stored trouble codes in the emulator's hex ("0143" is P0143). On CAN a real ECU's answer starts with
    # the number of codes, which the emulator leaves out: give it first, ("02", "0143", "0196").
    dtcs: tuple[str, ...] = ()
    pty: bool = False  # serve on a pseudo-terminal (a serial port, as /dev/rfcomm0 is) instead of TCP
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    tty: str | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return self.tty if self.pty and self.tty else f"socket://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Emulator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()  # in pty mode it only names the batch file
        batch = self.workdir / f"elm-{self.port}.out"
        batch.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The emulator keeps its stored codes in `elm.obd_message.DTC_STORED`, empty unless set.
        run = ["-m", "elm"] if not self.dtcs else [
            "-c", f"import runpy, elm.obd_message as m; m.DTC_STORED[:] = {list(self.dtcs)!r}; "
                  "runpy.run_module('elm', run_name='__main__', alter_sys=True)"]
        self.proc = subprocess.Popen(
            [sys.executable, *run, "-s", self.scenario, *(() if self.pty else ("-n", str(self.port))),
             "-b", str(batch)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.workdir, env=env, start_new_session=True)
        def alive() -> bool:
            return self.proc is not None and self.proc.poll() is None

        if self.pty:
            self.tty = self._wait_tty(batch, timeout, alive)
        else:
            wait_port("127.0.0.1", self.port, timeout, alive=alive)
        return self

    @staticmethod
    def _wait_tty(batch: Path, timeout: float, alive: Callable[[], bool]) -> str:
        """The pseudo-terminal the emulator serves: the first line of its batch file."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            with contextlib.suppress(OSError):
                first = batch.read_text().split("\n", 1)
                if len(first) == 2 and first[0].startswith("/dev/"):
                    return first[0]
            time.sleep(0.02)
        raise RuntimeError(f"ELM327 emulator gave no pty within {timeout:.0f} s (alive: {alive()})")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
