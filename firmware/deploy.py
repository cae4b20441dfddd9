"""`fleet firmware deploy`: copy a bundle onto a board (or a virtual device's pty) with mpremote, then restart it.

It talks mpremote's own transport (the raw REPL over the serial line), always as `resume` does: no soft
reset first, because a soft reset ends the unix port (a board's running program is stopped by ^C instead).
One round trip asks the board for the SHA-256 of every file of the bundle; only files that differ are
copied (with a progress bar), a stale `x.py` that would shadow a new `x.mpy` is removed, and the board is
restarted: `machine.reset()`, or on the unix port exit status 3, which `fleet node run` takes as a reset.
"""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware.bundle import FirmwareError, load_bundle

CHUNK = 1024  # bytes per write: larger than mpremote's 256 (fewer round trips), small enough for an ESP8266

# Runs on the board: hashes the files it is given; `-` for a missing one. `p` is filled in per call.
_HASHES = """import hashlib,binascii
b=bytearray(512)
def h(p):
 try:
  f=open(p,'rb')
 except OSError:
  return '-'
 d=hashlib.sha256()
 m=memoryview(b)
 while 1:
  n=f.readinto(b)
  if not n:break
  d.update(m[:n])
 f.close()
 return binascii.hexlify(d.digest()).decode()
print(repr([h(x) for x in P]))
"""

_RESTART = """import sys
if sys.platform in ('linux','darwin'):
 sys.exit(3)
import machine
machine.reset()
"""


@dataclass
class Deployed:
    """What a deploy did."""

    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    platform: str = ""


def _transport(port: str, baud: int) -> Any:
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    try:
        t = SerialTransport(port, baudrate=baud)
    except (TransportError, OSError) as e:
        raise FirmwareError(f"cannot open {port}: {e}") from None
    try:
        t.enter_raw_repl(soft_reset=False)
    except Exception as e:
        t.close()
        raise FirmwareError(f"{port}: no MicroPython raw REPL answered ({e})") from None
    return t


def _board(t: Any) -> tuple[str, int]:
    t.exec("import sys")
    plat, mpy = t.eval("(sys.platform, getattr(sys.implementation, '_mpy', 0))")
    return plat, mpy


def check_compatible(meta: dict[str, Any], plat: str, mpy: int, port: str) -> None:
    """The bundle was made for this kind of board and its .mpy format loads there."""
    if plat not in meta["platforms"]:
        raise FirmwareError(f"{port} runs MicroPython on {plat!r}, the bundle is for {meta['target']}: "
                            f"make it with --target {'unix' if plat in ('linux', 'darwin') else plat}")
    if mpy and meta["files"] and any(f.endswith(".mpy") for f in meta["files"]):
        board = mpy & 0xFF
        ours = int(meta["mpy"].split(".")[0])
        if board != ours:
            raise FirmwareError(f"{port} loads .mpy v{board}, the bundle holds v{meta['mpy']}: make it with "
                                "--micropython set to the board's MicroPython version")


def deploy(port: str, folder: Path, *, force: bool = False, restart: bool = True, baud: int = 115200,
           quiet: bool = False) -> Deployed:
    """Copy the bundle in `folder` to the board on `port`; see the module's doc."""
    from mpremote.transport import TransportError, TransportExecError
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    meta = load_bundle(folder)
    files: dict[str, str] = meta["files"]
    started = time.monotonic()
    done = Deployed()
    t = _transport(port, baud)
    try:
        done.platform, mpy = _board(t)
        check_compatible(meta, done.platform, mpy, port)
        names = list(files)
        twins = [f[:-4] + ".py" for f in names if f.endswith(".mpy")]
        t.exec("P=" + repr(names + twins))
        remote = ast.literal_eval(t.exec(_HASHES).decode().strip())
        have = dict(zip(names + twins, remote, strict=True))
        todo = [f for f in names if force or have[f] != files[f]]
        done.unchanged = [f for f in names if f not in todo]
        made: set[str] = {d for f in names if have[f] != "-" for d in _parents(f)}
        console = Console(stderr=False, quiet=quiet)
        total = sum((folder / f).stat().st_size for f in todo)
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("deploy", total=total or 1)
            for f in todo:
                for d in _parents(f):
                    if d not in made:
                        t.exec(f"import os\ntry:\n os.mkdir({d!r})\nexcept OSError:\n pass")
                        made.add(d)
                data = (folder / f).read_bytes()
                bar.update(task, description=f)
                base = bar.tasks[0].completed

                def moved(n: int, _total: int, base: float = base) -> None:
                    bar.update(task, completed=base + n)

                t.fs_writefile(f, data, chunk_size=CHUNK, progress_callback=moved)
                bar.update(task, completed=base + len(data))
                console.print(f"copied {f} ({len(data):,} B)")
                done.copied.append(f)
                done.bytes += len(data)
        done.removed = [p for p in twins if have[p] != "-"]
        for p in done.removed:
            t.fs_rmfile(p)
            console.print(f"removed {p} (it would shadow the new .mpy)")
        if restart:
            t.exec_raw_no_follow(_RESTART)
        else:
            t.exit_raw_repl()
    except (TransportError, TransportExecError, OSError) as e:
        raise FirmwareError(f"{port}: deploy failed: {e}") from None
    finally:
        t.close()
    done.seconds = time.monotonic() - started
    return done


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
