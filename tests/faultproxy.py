"""A TCP fault proxy for tests: sits between any client and a broker and, on command, delays,
stalls, cuts, half-opens, corrupts or throttles the stream.

It runs on a thread with its own event loop (as the embedded broker does), so synchronous tests,
async tests and subprocesses (the MicroPython VM) can all be put behind it. Directions: `up` is
client → broker, `down` is broker → client.

    with FaultProxy("127.0.0.1", broker.port) as proxy:
        node connects to proxy.port
        proxy.stall()            # both directions hold their bytes (a link that stops answering)
        proxy.resume()           # … and deliver them again
        proxy.half_open("down")  # broker → client bytes vanish; the sockets stay open
        proxy.corrupt("down", 4) # flip the next 4 bytes going to the client
        proxy.cut()              # abort every connection now (both ends see a reset)
        proxy.throttle(2000)     # at most 2,000 bytes/s each way
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from dataclasses import dataclass, field

from fleet.broker import free_port

DIRECTIONS = ("up", "down")


def report(fault: str, **figures: object) -> None:
    """A measured figure of a fault test (recovery time, heap …): printed (`pytest -s` shows it) and, when
    FLEET_FAULT_FIGURES names a file, appended to it as a JSON line (bench/faults_report.py reads it)."""
    line = json.dumps({"fault": fault, **figures})
    print(f"FAULT {line}")
    if path := os.environ.get("FLEET_FAULT_FIGURES"):
        with open(path, "a") as f:
            f.write(line + "\n")


@dataclass
class _Direction:
    hold: asyncio.Event = field(default_factory=asyncio.Event)  # set = flowing
    drop: bool = False
    corrupt: int = 0
    bytes: int = 0

    def __post_init__(self) -> None:
        self.hold.set()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.delay = 0.0
        self.rate: float | None = None
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._dirs: dict[str, _Direction] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # --- life ----------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()

        async def serve() -> None:
            self._dirs = {d: _Direction() for d in DIRECTIONS}
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            ready.set()
            async with self._server:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._server.serve_forever()
            # connections still being set up or pumped: end them here, not as "destroyed but pending"
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        def run() -> None:
            self._loop.run_until_complete(serve())

        # Started by start(); ends when stop() closes the server.
        self._thread = threading.Thread(target=run, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._abort_all)
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    # --- faults (callable from any thread) ----------------------------------------------------------

    def _call(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        done = threading.Event()

        def go() -> None:
            fn(*args)
            done.set()

        self._loop.call_soon_threadsafe(go)
        done.wait(5)

    def stall(self, direction: str | None = None) -> None:
        """Hold the bytes (one direction, or both): they are kept and delivered on `resume`."""
        for d in self._pick(direction):
            self._call(self._dirs[d].hold.clear)

    def resume(self) -> None:
        """Back to a clean link: no holds, drops, corruption, delay or throttle."""
        def clear() -> None:
            for d in self._dirs.values():
                d.drop, d.corrupt = False, 0
                d.hold.set()
            self.delay, self.rate = 0.0, None

        self._call(clear)

    def half_open(self, direction: str) -> None:
        """Bytes in `direction` vanish while both sockets stay open."""
        def set_drop() -> None:
            self._dirs[direction].drop = True
        self._call(set_drop)

    def corrupt(self, direction: str, count: int) -> None:
        """Flip every bit of the next `count` bytes going in `direction`."""
        def set_corrupt() -> None:
            self._dirs[direction].corrupt = count
        self._call(set_corrupt)

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds

    def throttle(self, bytes_per_second: float | None) -> None:
        self.rate = bytes_per_second

    def cut(self) -> None:
        """Abort every open connection (new ones are still accepted)."""
        self._call(self._abort_all)

    def transferred(self, direction: str) -> int:
        return self._dirs[direction].bytes

    @property
    def connections(self) -> int:
        return len(self._writers) // 2

    # --- inside the loop ------------------------------------------------------------------------------

    def _pick(self, direction: str | None) -> tuple[str, ...]:
        return DIRECTIONS if direction is None else (direction,)

    def _abort_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            b_reader, b_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.transport.abort()
            return
        self._writers |= {c_writer, b_writer}
        # Both pumps are started here and end when either side closes or the proxy cuts them.
        pumps = [asyncio.create_task(self._pump(c_reader, b_writer, self._dirs["up"]), name="proxy-up"),
                 asyncio.create_task(self._pump(b_reader, c_writer, self._dirs["down"]), name="proxy-down")]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for p in pumps:
            p.cancel()
        for w in (c_writer, b_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, d: _Direction) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(4096)
                if not data:
                    return
                await d.hold.wait()
                if self.delay:
                    await asyncio.sleep(self.delay)
                if d.drop:
                    continue
                if d.corrupt:
                    n = min(d.corrupt, len(data))
                    data = bytes(b ^ 0xFF for b in data[:n]) + data[n:]
                    d.corrupt -= n
                writer.write(data)
                await writer.drain()
                d.bytes += len(data)
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)
