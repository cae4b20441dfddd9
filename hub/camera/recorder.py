"""The recorder process, and the handle the camera job drives it with.

The camera job runs `python -m hub.camera.recorder`: the backend and the segment writer live in that
process, so encoding (a core's worth of work at 720p) never stalls the hub's event loop, and a crash
or a SIGKILL of the recorder costs at most the open segment, which `recover` finds at the next start.

The link is plain text lines:
- job → recorder, on stdin: first one JSON line `{"settings": {…}, "mode": "loop"|"clip", "clip": 30}`,
  then commands: `loop` (record continuously), `clip <seconds>` (a clip now; a running loop recording
  resumes after it), `stop`. End of input means stop, so the recorder never outlives the hub.
- recorder → job, on stdout: one JSON object per line: `{"event": "capture", "capture": …, "kind": …}`
  when a capture begins, `{"event": "segment", …}` per closed segment (the `camera/segment` payload),
  `{"event": "stopped", "frames": …}` at the end. Logs and tracebacks go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from hub.camera import RecorderError, Settings
from hub.camera.segments import TICKS, Segment, SegmentWriter
from hub.children import end_child

log = logging.getLogger("hub.camera.recorder")


def open_backend(settings: Settings) -> Any:
    """The backend `settings.backend` names; picamera2 is imported only here, only when chosen."""
    if settings.backend == "picamera2":
        from hub.camera.picamera2 import Picamera2Backend

        return Picamera2Backend(settings)
    from hub.camera.pyav import PyAVBackend

    return PyAVBackend(settings)


class Session:
    """What the recorder does between frames: applies commands to the writer, ends clips.

    `tick(pts)` is called by the backend before each frame, in the recording thread; commands arrive
    from any thread through `commands`."""

    def __init__(self, writer: SegmentWriter, emit: Callable[[dict[str, Any]], None], mode: str,
                 clip: float | None) -> None:
        self.writer = writer
        self.emit = emit
        self.commands: queue.Queue[str] = queue.Queue()
        self.mode: str | None = None
        self.resume_loop = False  # a clip interrupted a loop recording, which goes on after it
        self.clip_end = 0
        self.frames = 0
        self._announced: str | None = None
        self.commands.put("loop" if mode == "loop" else f"clip {clip or 30}")

    def tick(self, pts: int) -> bool:
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                break
            if not self.apply(command, pts):
                return False
        if self.mode == "clip" and pts >= self.clip_end:
            if not self.resume_loop:
                return False
            self.mode = "loop"
            self.writer.begin("loop")
        if self.writer.capture != self._announced and self.writer.capture is not None:
            self._announced = self.writer.capture
            self.emit({"event": "capture", "capture": self.writer.capture, "kind": self.writer.kind})
        self.frames += 1
        return True

    def apply(self, command: str, pts: int) -> bool:
        verb, _, arg = command.strip().partition(" ")
        if verb == "stop":
            return False
        if verb == "loop":
            if self.mode == "clip":
                self.resume_loop = True
            elif self.mode is None:
                self.mode = "loop"
                self.writer.begin("loop")
        elif verb == "clip":
            try:
                seconds = float(arg)
                if not 0 < seconds < math.inf:
                    raise ValueError(arg)
            except ValueError:
                log.warning("ignored %r: clip takes a number of seconds", command)
                return True
            if self.mode != "clip":
                self.resume_loop = self.mode == "loop"
                self.mode = "clip"
                self.writer.begin("clip")
            self.clip_end = pts + round(seconds * TICKS)
        else:
            log.warning("ignored unknown command %r", command)
        return True


def main() -> int:
    """The recorder process (see the module docstring)."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    request = json.loads(sys.stdin.readline())
    settings = Settings.from_dict(request["settings"])
    out_lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
            sys.stdout.flush()

    def on_closed(segment: Segment) -> None:
        emit({"event": "segment", **segment.announcement()})

    writer = SegmentWriter(settings, on_closed)
    session = Session(writer, emit, request.get("mode", "loop"), request.get("clip"))

    def read_commands() -> None:
        for line in sys.stdin:
            session.commands.put(line)
        session.commands.put("stop")

    # Started here, ends at end of input (the job closed our stdin or died); a daemon, so it never
    # keeps the process alive.
    threading.Thread(target=read_commands, name="recorder-commands", daemon=True).start()
    try:
        open_backend(settings).run(writer, session.tick)
    finally:
        writer.close()
        emit({"event": "stopped", "frames": session.frames, "skipped": writer.skipped})
    return 0


class Recorder:
    """The job's handle on one recorder process: `await start()`, `async for event in events()`,
    `await send("clip 30")`, `await stop()`."""

    def __init__(self, settings: Settings, log: logging.Logger) -> None:
        self.settings = settings
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self, mode: str, clip: float | None = None) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.camera.recorder", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        # Started here, ends when the recorder closes its stderr (it exited or was killed).
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"camera-recorder-stderr-{self.pid}")
        await self.send(json.dumps({"settings": self.settings.to_dict(), "mode": mode, "clip": clip}))

    async def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        if self.proc.stdin.is_closing():
            return  # stopping: later commands have nothing to act on
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it exited: events() tells why
            self.proc.stdin.write(line.encode() + b"\n")
            await self.proc.stdin.drain()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The recorder's events until it exits; RecorderError when it exits with an error or is killed."""
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                yield json.loads(line)
            except ValueError:
                self.log.warning("recorder wrote a line that is not JSON: %r", line[:200])
        code = await self.proc.wait()
        if self._stderr_task is not None:
            await self._stderr_task
        if code != 0:
            raise RecorderError(code, " | ".join(self._stderr) or "no output")

    async def stop(self, timeout: float = 15.0) -> None:
        """Ask the recorder to stop (it closes the open segment), kill it if it takes longer than `timeout`."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():  # not asked already
            await self.send("stop")
            proc.stdin.close()
        await end_child(proc, timeout, self.log, "recorder")

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr.append(line)
            if line.startswith(("WARNING", "ERROR", "Traceback")):
                self.log.warning("recorder: %s", line)
            else:
                self.log.debug("recorder: %s", line)

    def usage(self) -> dict[str, float]:
        """CPU seconds and resident bytes of the recorder process so far (Linux /proc), {} when none runs."""
        if self.proc is None or self.proc.returncode is not None:
            return {}
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return {}
        ticks = os.sysconf("SC_CLK_TCK")
        return {"cpu_seconds": (int(stat[11]) + int(stat[12])) / ticks,
                "rss": int(stat[21]) * os.sysconf("SC_PAGE_SIZE")}


if __name__ == "__main__":
    sys.exit(main())
