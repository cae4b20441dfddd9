"""A small MQTT 3.1.1 broker of our own that misbehaves on purpose, for the node client's tests.

Mosquitto never sends a malformed packet, an oversized one, a message on a topic nobody subscribed,
and it always answers pings: this one does whatever the test asks. It runs on a thread with its own
event loop, so a plain (sync) test can drive it while the MicroPython VM talks to it.
Its packet codec is written here, apart from the client's, so the two cannot share a mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet.broker import free_port, wait_port


def mqtt_length(n: int) -> bytes:
    out = bytearray()
    while True:
        d, n = n % 128, n // 128
        out.append(d | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def publish_packet(topic: str, payload: bytes, qos: int = 0, pid: int = 1, retain: bool = False) -> bytes:
    body = mqtt_str(topic) + (pid.to_bytes(2, "big") if qos else b"") + payload
    return bytes([0x30 | qos << 1 | int(retain)]) + mqtt_length(len(body)) + body


@dataclass
class Connection:
    client_id: str
    keepalive: int
    clean_session: bool
    will: tuple[str, bytes] | None
    user: str | None
    password: bytes | None
    writer: asyncio.StreamWriter


@dataclass
class FakeBroker:
    """`with FakeBroker() as fb:` — accepts one client at a time and records what it does."""

    port: int = 0
    host: str = "127.0.0.1"
    answer_pings: bool = True
    ack_publishes: bool = True
    refuse: int = 0  # a CONNACK return code other than 0 refuses every client
    connections: list[Connection] = field(default_factory=list)
    published: list[tuple[str, bytes, int, bool, bool]] = field(default_factory=list)  # + retain, dup
    subscribed: list[tuple[str, int]] = field(default_factory=list)
    pings: int = 0
    pubacks: list[int] = field(default_factory=list)
    hangups: int = 0  # connections an MQTT client closed
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _stop: asyncio.Event | None = field(default=None, init=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def start(self) -> FakeBroker:
        self.port = self.port or free_port(self.host)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        # Started here; ends when stop() sets _stop.
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(ready),),
                                        name=f"fakebroker-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(5)
        wait_port(self.host, self.port, 5)
        return self

    def stop(self) -> None:
        if self._loop and self._stop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(5)

    def __enter__(self) -> FakeBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- driven from the test's thread ------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write raw bytes to the newest connection."""
        assert self._loop is not None
        conn = self.connections[-1]

        def write() -> None:
            conn.writer.write(data)

        self._loop.call_soon_threadsafe(write)

    def wait(self, what: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not what():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fake broker: condition not met in {timeout} s; "
                                       f"{len(self.connections)} connections, {self.subscribed}")
                self._changed.wait(min(left, 0.2))

    # --- the broker side --------------------------------------------------------------------------

    def _note(self) -> None:
        with self._changed:
            self._changed.notify_all()

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._client, self.host, self.port)
        ready.set()
        async with server:
            await self._stop.wait()
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # One task per connection, started by asyncio's server; ends when the client goes or stop() cancels it.
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await self._serve_client(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                # An MQTT client's; not start()'s check that the port is open.
                self.hangups += any(c.writer is writer for c in self.connections)
        writer.close()
        self._tasks.discard(task)
        self._note()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            first = (await reader.readexactly(1))[0]
            n, shift = 0, 0
            while True:
                d = (await reader.readexactly(1))[0]
                n |= (d & 0x7F) << shift
                shift += 7
                if not d & 0x80:
                    break
            body = await reader.readexactly(n)
            self._handle(first, body, writer)
            await writer.drain()

    def _handle(self, first: int, body: bytes, writer: asyncio.StreamWriter) -> None:
        kind = first & 0xF0
        if kind == 0x10:  # CONNECT
            flags, keepalive = body[7], int.from_bytes(body[8:10], "big")
            i = 10
            fields = []
            while i < len(body):
                ln = int.from_bytes(body[i:i + 2], "big")
                fields.append(body[i + 2:i + 2 + ln])
                i += 2 + ln
            will = (fields[1].decode(), fields[2]) if flags & 0x04 else None
            rest = fields[3:] if will else fields[1:]
            user = rest.pop(0).decode() if flags & 0x80 else None
            password = rest.pop(0) if flags & 0x40 else None
            self.connections.append(Connection(fields[0].decode(), keepalive, bool(flags & 2), will, user, password,
                                               writer))
            writer.write(bytes([0x20, 2, 0, self.refuse]))
        elif kind == 0x30:  # PUBLISH
            qos = first >> 1 & 3
            tl = int.from_bytes(body[:2], "big")
            topic = body[2:2 + tl].decode()
            payload = body[2 + tl + (2 if qos else 0):]
            self.published.append((topic, payload, qos, bool(first & 1), bool(first & 8)))
            if qos and self.ack_publishes:
                writer.write(b"\x40\x02" + body[2 + tl:4 + tl])
        elif kind == 0x40:  # PUBACK
            self.pubacks.append(int.from_bytes(body[:2], "big"))
        elif kind == 0x80:  # SUBSCRIBE (one filter per packet is all the client sends)
            tl = int.from_bytes(body[2:4], "big")
            self.subscribed.append((body[4:4 + tl].decode(), body[4 + tl]))
            writer.write(b"\x90\x03" + body[:2] + bytes([body[4 + tl]]))
        elif kind == 0xA0:  # UNSUBSCRIBE
            writer.write(b"\xb0\x02" + body[:2])
        elif kind == 0xC0:  # PINGREQ
            self.pings += 1
            if self.answer_pings:
                writer.write(b"\xd0\x00")
        self._note()
