"""The OBD-II bridge: python-OBD on MQTT (PROTOCOL.md section 6, docs/OBD.md).

The adapter is driven by a worker process of its own (`hub.obd.worker`, which runs python-OBD on a
thread, `hub.obd.link`); this job is the event-loop side: it publishes each answer as obd-socketio's
JSON, keeps `obd/status` retained, answers the python-OBD API verbs under `obd/api/<verb>`,
publishes trouble codes when they change, announces watched values to Home Assistant, and stops
polling on key-off or a low battery.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import aiomqtt
import obd

from fleet.errors import ConfigIssue, did_you_mean
from fleet.hjsonpos import Document
from fleet.mqtt import response_info
from hub.job import Action, Event, Hub, Job
from hub.obd import encode, ha
from hub.obd.options import Options, check, watch_issue
from hub.obd.process import Worker, WorkerError

CALL_TIMEOUT = 10.0  # seconds an API call may wait for the adapter (a connect in progress included)
VERBS = ("watch", "unwatch", "unwatch_all", "query", "supports", "supported_commands", "status")


def _honour_cancel() -> None:
    """Raise CancelledError if this task was cancelled. On Python 3.11, asyncio.wait_for (ours, and the one
    inside aiomqtt's publish) loses a cancellation that lands as what it waits for completes; the task
    still counts it, so every loop of the job checks here after such a wait, or it might never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ApiError(Exception):
    """A request the bridge refuses; the message goes back in the error reply."""


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class ObdJob(Job):
    NAME: ClassVar[str] = "obd"
    EVENTS: ClassVar[dict[str, Event]] = {
        "connected": Event("obd/status", "connected"),
        "disconnected": Event("obd/status", "disconnected"),
        "no_car": Event("obd/status", "no car"),
        "sleeping": Event("obd/status", "sleeping"),
        "low_battery": Event("obd/status", "low battery"),
        "dtc": Event("obd/dtc"),
    }
    ACTIONS: ClassVar[dict[str, Action]] = {
        "unwatch_all": Action("obd/api/unwatch_all", '{"id":"rule"}', reply="obd/reply"),
        "read_dtc": Action("obd/api/query", '{"command":"GET_DTC","id":"rule"}', reply="obd/reply"),
    }

    def __init__(self, hub: Hub, config: dict[str, Any]) -> None:
        super().__init__(hub, config)
        self.options = Options.from_config(config)
        self.worker = Worker(self.options.link, self.log)
        self.status: str | None = None  # as last published
        self.link_state = "disconnected"
        self.pause_reason: str | None = None  # "sleeping" or "low battery" while polling is stopped
        self.supported: set[str] = set()
        self.dtc: list[Any] | None = None
        self.announced: set[str] = set()
        self.published = 0
        self._last_usage: tuple[float, float] | None = None  # (monotonic, worker CPU seconds) at the last stats()
        self._up = asyncio.Event()  # set while the car answers and polling runs

    @classmethod
    def check(cls, doc: Document, path: tuple[str | int, ...]) -> list[ConfigIssue]:
        return check(doc, path)

    def stats(self) -> dict[str, float]:
        """Values published so far; CPU % of the adapter worker since the last call, and its RSS."""
        out: dict[str, float] = {"published": self.published}
        usage = self.worker.usage()
        if usage is None:
            self._last_usage = None
            return out
        now = time.monotonic()
        out["rss"] = usage[1]
        if self._last_usage is not None and now > self._last_usage[0]:
            out["cpu"] = round(100.0 * (usage[0] - self._last_usage[1]) / (now - self._last_usage[0]), 1)
        self._last_usage = (now, usage[0])
        return out

    async def run(self) -> None:
        await self._set_status()
        try:
            await self._run()
        except ExceptionGroup as group:
            raise group.exceptions[0] from None  # the service reports the failure itself, not "a TaskGroup"

    async def _run(self) -> None:
        async with self.worker, asyncio.TaskGroup() as tasks:
            for name, rate in self.options.watch.items():
                if watch_issue(name) is None:  # check() refused the others
                    self.worker.watch(name, rate)
            # All five end with the job: the service cancels run(), which cancels the group (and
            # leaving the worker's block ends the worker). _forward ends the run if the worker dies.
            tasks.create_task(self._forward(), name="obd-forward")
            tasks.create_task(self._serve_api(), name="obd-api")
            tasks.create_task(self._follow_ignition(), name="obd-ignition")
            if self.options.dtc_interval > 0:
                tasks.create_task(self._every(self.options.dtc_interval, self._read_dtc), name="obd-dtc")
            if self.options.low_voltage is not None:
                tasks.create_task(self._every(self.options.voltage_interval, self._read_voltage),
                                  name="obd-voltage")

    async def _forward(self) -> None:
        """The worker's reports to MQTT; WorkerError (ending the run) when the worker dies."""
        try:
            async for kind, data in self.worker.reports():
                if kind == "value":
                    await self._publish_value(*data)
                elif kind == "state":
                    self.link_state = data
                    await self._set_status()
                elif kind == "supported":
                    self.supported = data
                    for name in set(self.worker.watching) - data:
                        self.log.warning("%s is watched but this car does not support it", name)
                _honour_cancel()
        finally:
            self.link_state = "disconnected"
            with contextlib.suppress(Exception):  # the hub may be going down too: best effort
                await asyncio.shield(self._set_status())

    async def _publish_value(self, name: str, payload: bytes) -> None:
        """Publish the worker's encoding as it is; only a command's first value is read (for HA)."""
        await self.hub.publish(self.hub.topic("obd", name), payload, qos=0)
        self.published += 1
        if self.options.discovery and name not in self.announced:
            self.announced.add(name)
            answer = json.loads(payload)
            cmd = encode.find_command(name)
            if cmd is not None and isinstance(answer["value"], int | float) and answer["unit"] is not None:
                await self.hub.announce("sensor", ha.object_id(cmd),
                                        ha.sensor(cmd, self.hub.topic("obd", name), answer["unit"]))

    # --- status and battery care ------------------------------------------------------------------------

    async def _set_status(self) -> None:
        status = self.pause_reason or self.link_state
        if status == "connected":
            self._up.set()
        else:
            self._up.clear()
        if status != self.status:
            self.status = status
            self.log.info("status: %s", status)
            await self.hub.publish(self.hub.topic("obd", "status"), status, qos=1, retain=True)

    async def _pause(self, reason: str | None) -> None:
        self.pause_reason = reason
        self.worker.pause(reason is not None)
        await self._set_status()

    async def _follow_ignition(self) -> None:
        topic = self.hub.topic("ignition")
        async with self.hub.subscribe(topic) as messages:
            async for msg in messages:
                state = bytes(msg.payload or b"").decode("utf-8", "replace").strip()
                if not state:
                    continue  # a cleared retained state is no news
                if state == "OFF":
                    await self._pause("sleeping")
                elif state == "ON":
                    await self._pause(None)
                else:
                    self.log.warning("%s: expected ON or OFF, got %r: dropped", topic, state[:40])
                _honour_cancel()

    async def _every(self, interval: float, read: Callable[[], Awaitable[None]]) -> None:
        """Run `read()` when the car first answers, then every `interval` s while it answers."""
        while True:
            await self._up.wait()
            try:
                await read()
            except (WorkerError, TimeoutError) as exc:  # the link went down meanwhile, or no answer
                self.log.info("%s: %s", read.__name__, exc)
            _honour_cancel()
            await asyncio.sleep(interval)

    async def _query(self, command: str) -> dict[str, Any]:
        return await asyncio.wait_for(self.worker.query(command), CALL_TIMEOUT)

    async def _read_dtc(self) -> None:
        codes = (await self._query("GET_DTC"))["value"]
        if codes != self.dtc:
            self.dtc = codes
            self.log.info("trouble codes: %s", ", ".join(c[0] for c in codes) or "none")
            await self.hub.publish(self.hub.topic("obd", "dtc"), _json(codes), qos=1, retain=True)

    async def _read_voltage(self) -> None:
        volts = (await self._query("ELM_VOLTAGE"))["value"]
        threshold = self.options.low_voltage
        if threshold is None or self.pause_reason or not isinstance(volts, int | float):
            return
        if volts < threshold:
            self.log.warning("battery at %.1f V, below %.1f V: polling stops until the key is turned on",
                             volts, threshold)
            await self._pause("low battery")

    # --- the python-OBD API over MQTT -------------------------------------------------------------------

    async def _serve_api(self) -> None:
        async with self.hub.subscribe(self.hub.topic("obd", "api", "+")) as messages, \
                asyncio.TaskGroup() as requests:
            for n in itertools.count(1):
                msg = await anext(messages)
                if msg.retain:
                    continue  # a request is an event, not a state
                # One task per request, ending with its reply: a query waiting on the adapter holds up
                # no other request. Requests that change the watch list do so before their first await,
                # so they take effect in arrival order.
                requests.create_task(self._answer(msg), name=f"obd-api-{n}")

    async def _answer(self, msg: aiomqtt.Message) -> None:
        topic = msg.topic.value
        verb = topic.rsplit("/", 1)[-1]
        request: Any = {}
        try:
            raw = bytes(msg.payload or b"")
            if raw.strip():
                try:
                    request = json.loads(raw)
                except ValueError as exc:
                    raise ApiError(f"payload is not JSON: {exc}") from None
            if not isinstance(request, dict):
                raise ApiError("payload must be a JSON object")
            if verb not in VERBS:
                raise ApiError(f"unknown verb {verb}{did_you_mean(verb, VERBS)}")
            result = await getattr(self, f"_api_{verb}")(request)
            reply = {"id": request.get("id"), "verb": verb, "ok": True, "result": result}
        except ApiError as exc:
            self.log.warning("%s: %s", topic, exc)
            reply = {"id": request.get("id") if isinstance(request, dict) else None, "verb": verb,
                     "ok": False, "error": str(exc)}
        response_topic, correlation = response_info(msg)
        await self.hub.publish(response_topic or self.hub.topic("obd", "reply"), _json(reply), qos=1,
                               correlation=correlation)

    @staticmethod
    def _command(request: dict[str, Any]) -> Any:
        name = request.get("command")
        if not isinstance(name, str):
            raise ApiError("`command` must name an OBD command, e.g. RPM")
        cmd = encode.find_command(name)
        if cmd is None:
            raise ApiError(f"unknown command {name}{did_you_mean(name, encode.all_command_names())}")
        return cmd

    async def _api_watch(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = self._command(request)
        rate = request.get("rate", self.options.default_rate)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not rate >= 0:
            raise ApiError("`rate` must be answers per second, 0 or more (0: as fast as the adapter answers)")
        if problem := watch_issue(cmd.name):
            raise ApiError(problem)
        if self.supported and cmd.name not in self.supported and not request.get("force"):
            raise ApiError(f"{cmd.name} is not supported by this car (send force: true to watch it anyway)")
        self.worker.watch(cmd.name, float(rate))
        return {"watching": self.worker.watching}

    async def _api_unwatch(self, request: dict[str, Any]) -> dict[str, Any]:
        self.worker.unwatch(self._command(request).name)
        return {"watching": self.worker.watching}

    async def _api_unwatch_all(self, request: dict[str, Any]) -> dict[str, Any]:
        self.worker.unwatch_all()
        return {"watching": {}}

    async def _api_query(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = self._command(request)
        force = bool(request.get("force"))
        if self.supported and cmd.name not in self.supported and not force:
            raise ApiError(f"{cmd.name} is not supported by this car (send force: true to ask anyway)")
        try:
            return await self._query(cmd.name)
        except WorkerError as exc:
            if exc.link_down:
                raise ApiError(f"no connection to the car (status: {self.status})") from None
            raise ApiError(f"{cmd.name}: {exc}") from None
        except TimeoutError:
            raise ApiError(f"the adapter did not answer within {CALL_TIMEOUT:.0f} s") from None

    async def _api_supports(self, request: dict[str, Any]) -> bool:
        cmd = self._command(request)
        if not self.supported:
            raise ApiError("not known until the car has answered once")
        return cmd.name in self.supported

    async def _api_supported_commands(self, request: dict[str, Any]) -> list[dict[str, str]]:
        if not self.supported:
            raise ApiError("not known until the car has answered once")
        return [encode.describe(obd.commands[name]) for name in sorted(self.supported)]

    async def _api_status(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"status": self.status, "port": self.options.link.port, "watching": self.worker.watching,
                "dtc": self.dtc}
