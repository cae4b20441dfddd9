"""The adapter link: one thread owns the python-OBD connection and does all its blocking work.

python-OBD is blocking and not thread-safe, so one thread ("obd-link") connects (with backoff), polls
the watch list at each command's rate, and runs the one-off calls (`query`, the voltage and trouble
code reads) between two polls. It runs in the adapter worker process (hub/obd/worker.py), whose main
thread hands it requests and whose `deliver` callback writes its reports for the job.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import obd
from obd.OBDCommand import OBDCommand
from obd.utils import OBDStatus

log = logging.getLogger("hub.obd.link")

# python-OBD's connection states, in our words (PROTOCOL section 6, `obd/status`).
STATES = {
    OBDStatus.CAR_CONNECTED: "connected",
    OBDStatus.OBD_CONNECTED: "no car",
    OBDStatus.ELM_CONNECTED: "no car",
    OBDStatus.NOT_CONNECTED: "disconnected",
}


@dataclass(frozen=True)
class LinkSettings:
    port: str  # a serial device (/dev/ttyUSB0), a bound Bluetooth port (/dev/rfcomm0) or socket://host:port
    baudrate: int | None = None
    protocol: str | None = None
    fast: bool = True
    timeout: float = 0.1  # python-OBD's read timeout per answer, seconds
    retry_min: float = 1.0  # first wait after a failed connect; python-OBD cannot reopen at once anyway
    retry_max: float = 30.0
    stale_after: int = 20  # this many empty answers in a row: the car went quiet, connect afresh


@dataclass
class Watch:
    cmd: OBDCommand
    rate: float  # answers per second; 0 = as fast as the adapter answers
    due: float = 0.0

    @property
    def interval(self) -> float:
        return 1.0 / self.rate if self.rate > 0 else 0.0


@dataclass
class Link:
    """`deliver(kind, data)` is called on the link thread with ("state", str), ("supported", set of
    names) after each connect, and ("value", OBDResponse) for every non-empty watched answer."""

    settings: LinkSettings
    deliver: Callable[[str, Any], None]
    connect: Callable[..., obd.OBD] = obd.OBD
    _watch: dict[str, Watch] = field(default_factory=dict, init=False)
    _calls: list[tuple[Callable[[obd.OBD], Any], concurrent.futures.Future[Any]]] = field(
        default_factory=list, init=False)
    _wake: threading.Condition = field(default_factory=threading.Condition, init=False)
    _paused: bool = field(default=False, init=False)
    _stopping: bool = field(default=False, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    state: str = field(default="disconnected", init=False)

    # --- called from the event loop; each takes the lock only briefly -------------------------------

    def start(self) -> None:
        # Started by ObdJob.run; ends when close() is called (the job's end).
        self._thread = threading.Thread(target=self._run, name="obd-link", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and close the adapter. Blocks up to `timeout` (a connect in progress)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def watch(self, cmd: OBDCommand, rate: float) -> None:
        with self._wake:
            self._watch[cmd.name] = Watch(cmd, rate, time.monotonic())
            self._wake.notify()

    def unwatch(self, name: str) -> bool:
        with self._wake:
            return self._watch.pop(name, None) is not None

    def unwatch_all(self) -> None:
        with self._wake:
            self._watch.clear()

    def watching(self) -> dict[str, float]:
        with self._wake:
            return {name: w.rate for name, w in self._watch.items()}

    def pause(self, paused: bool) -> None:
        """Stop (or resume) polling and connecting; a one-off call still runs if the link is up."""
        with self._wake:
            self._paused = paused
            now = time.monotonic()
            for w in self._watch.values():
                w.due = now
            self._wake.notify()

    def call(self, fn: Callable[[obd.OBD], Any]) -> concurrent.futures.Future[Any]:
        """Run `fn(connection)` on the link thread between two polls; the future fails with
        ConnectionError when there is no connection to the car."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._wake:
            self._calls.append((fn, future))
            self._wake.notify()
        return future

    # --- the link thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        conn: obd.OBD | None = None
        backoff = self.settings.retry_min
        empty = 0
        try:
            while True:
                with self._wake:
                    if self._stopping:
                        return
                    calls, self._calls = self._calls, []
                    paused = self._paused
                for fn, future in calls:
                    self._do_call(conn, fn, future)
                if conn is not None and conn.status() != OBDStatus.CAR_CONNECTED:
                    self._drop(conn, STATES[conn.status()])
                    conn = None
                if conn is None:
                    if paused:
                        self._sleep(None)
                        continue
                    conn = self._open()
                    if conn is None:
                        self._sleep(backoff)
                        backoff = min(backoff * 2, self.settings.retry_max)
                    else:
                        backoff, empty = self.settings.retry_min, 0
                    continue
                if paused:
                    self._sleep(None)
                    continue
                watch = self._next()
                if watch is None:
                    continue
                resp = conn.query(watch.cmd, force=True)  # support was checked when it was watched
                if resp.is_null():
                    empty += 1
                    if empty >= self.settings.stale_after:
                        log.warning("%d empty answers in a row: connecting again", empty)
                        self._drop(conn, "no car")
                        conn = None
                    continue
                empty = 0
                self.deliver("value", resp)
        except Exception as exc:  # a bug here must not leave the thread dead and the job unaware
            log.exception("OBD link thread failed")
            self._set_state("disconnected")
            self.deliver("failed", exc)
        finally:
            if conn is not None:
                conn.close()
            with self._wake:
                calls, self._calls = self._calls, []
            for _, future in calls:
                future.set_exception(ConnectionError("the OBD link is closing"))

    def _next(self) -> Watch | None:
        """The watched command due first; waits until it is due (or something changes)."""
        with self._wake:
            if not self._watch:
                self._wake.wait()
                return None
            watch = min(self._watch.values(), key=lambda w: w.due)
            now = time.monotonic()
            if watch.due > now:
                self._wake.wait(watch.due - now)
                return None
            # Keep the rate without bursts after a stall: never schedule into the past.
            watch.due = max(watch.due + watch.interval, now) if watch.interval else now
            return watch

    def _sleep(self, seconds: float | None) -> None:
        with self._wake:
            if not (self._stopping or self._calls):
                self._wake.wait(seconds)

    def _open(self) -> obd.OBD | None:
        s = self.settings
        try:
            conn = self.connect(s.port, baudrate=s.baudrate, protocol=s.protocol, fast=s.fast, timeout=s.timeout)
        except Exception as exc:  # pyserial and python-OBD raise many kinds; all mean "not now"
            log.info("connect to %s failed: %s", s.port, exc)
            self._set_state("disconnected")
            return None
        status = conn.status()
        self._set_state(STATES[status])
        if status != OBDStatus.CAR_CONNECTED:
            conn.close()
            return None
        log.info("connected to %s (%s), %d commands supported", s.port, conn.protocol_name(),
                 len(conn.supported_commands))
        self.deliver("supported", {c.name for c in conn.supported_commands})
        return conn

    def _drop(self, conn: obd.OBD, state: str) -> None:
        conn.close()
        self._set_state(state)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.deliver("state", state)

    @staticmethod
    def _do_call(conn: obd.OBD | None, fn: Callable[[obd.OBD], Any],
                 future: concurrent.futures.Future[Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        if conn is None or conn.status() != OBDStatus.CAR_CONNECTED:
            future.set_exception(ConnectionError("no connection to the car"))
            return
        try:
            future.set_result(fn(conn))
        except Exception as exc:
            future.set_exception(exc)
