"""The power job: ignition input and power latch (smartcar's GPIO container). The only owner of the latch.

The latch relay keeps the Pi powered after the key is turned off. On key-off (the ignition input off
for `debounce` seconds) the job publishes `ignition` `OFF`; the rules run the key-off sequence (in
`examples/hub.hjson`: stop recording → `upload.wait_empty` → `power.shutdown` → `power.release`). The
job itself guarantees the two things a rule cannot:

- a hard `deadline` after key-off, at which the latch is released whatever the rules are doing;
- key-on before the release cancels: the deadline is dropped, `release` and `shutdown` are refused
  while the ignition is on (the rules job cancels its run on `power.ignition_on`).

`upload.wait_empty` answers `unreachable` at once when no upload target can be reached, so the
sequence then goes on to shutdown and release right after recording stopped and disks were synced.

Pins go through gpiozero. Off a Raspberry Pi (or with `pin_factory: mock`) it uses gpiozero's
MockFactory, driven on `<home>/_sim/<hub>/pin<N>/set`, the latch level published on
`<home>/_sim/<hub>/pin<N>/level` (PROTOCOL.md section 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar

import aiomqtt

from fleet import topics
from fleet.errors import BrokerError, ConfigIssue, did_you_mean
from fleet.hjsonpos import Document, KeyPath
from hub.job import Action, Event, Hub, Job

DEFAULTS: dict[str, Any] = {
    "ignition_pin": 17, "latch_pin": 27, "active_high": True, "debounce": 2.0, "deadline": 900.0,
    "shutdown": ["systemctl", "poweroff"], "shutdown_timeout": 60.0, "pin_factory": "auto", "sim_ignition": "ON",
}
FACTORIES = ("auto", "mock", "gpio")


def on_a_pi() -> bool:
    try:
        return "Raspberry Pi" in Path("/proc/device-tree/model").read_text(errors="replace")
    except OSError:
        return False


class PowerJob(Job):
    NAME = "power"
    ACTIONS: ClassVar[dict[str, Action]] = {
        # `done` / `failed` once the command returned; `refused` while the ignition is on.
        "shutdown": Action("power/set", "shutdown", reply="power/shutdown", timeout=120.0),
        # `released`, or `refused` while the ignition is on.
        "release": Action("power/set", "release", reply="power/released"),
    }
    EVENTS: ClassVar[dict[str, Event]] = {
        "ignition_on": Event("ignition", "ON"),
        "ignition_off": Event("ignition", "OFF"),
    }

    def __init__(self, hub: Hub, config: dict[str, Any]) -> None:
        super().__init__(hub, config)
        conf = {**DEFAULTS, **(config or {})}
        self.conf = conf
        self.mock = conf["pin_factory"] == "mock" or (conf["pin_factory"] == "auto" and not on_a_pi())
        self.ignition: bool | None = None  # as published (after debounce)
        self.sequence = "idle"
        self.deadline: float | None = None  # wall-clock time of the hard deadline while a sequence runs
        self._levels: asyncio.Queue[bool] = asyncio.Queue()
        self._deadline_task: asyncio.Task[None] | None = None
        self._input: Any = None
        self._latch: Any = None

    # -- hub.hjson ---------------------------------------------------------------------------------

    @classmethod
    def check(cls, doc: Document, path: KeyPath) -> list[ConfigIssue]:
        section = doc.get(path)
        if not isinstance(section, dict):
            return [doc.issue(path, "the power section must be an object")]
        issues = []
        for key, value in section.items():
            at = (*path, key)
            if key not in DEFAULTS:
                issues.append(doc.issue(at, f"unknown key{did_you_mean(key, list(DEFAULTS))}"))
            elif key.endswith("_pin") and (isinstance(value, bool) or not isinstance(value, int)
                                           or not 0 <= value <= 53):
                issues.append(doc.issue(at, f"expected a GPIO (BCM) number 0-53, found {value!r}"))
            elif key in ("debounce", "deadline", "shutdown_timeout") and (
                    isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
                issues.append(doc.issue(at, f"expected seconds ≥ 0, found {value!r}"))
            elif key == "active_high" and not isinstance(value, bool):
                issues.append(doc.issue(at, "expected true or false"))
            elif key == "shutdown" and (not isinstance(value, list) or not value
                                        or not all(isinstance(v, str) for v in value)):
                issues.append(doc.issue(at, 'expected a command as a list, e.g. ["systemctl", "poweroff"]'))
            elif key == "pin_factory" and value not in FACTORIES:
                issues.append(doc.issue(at, f"expected one of {', '.join(FACTORIES)}"))
            elif key == "sim_ignition" and value not in ("ON", "OFF"):
                issues.append(doc.issue(at, "expected ON or OFF"))
        pins = [section.get(k, DEFAULTS[k]) for k in ("ignition_pin", "latch_pin")]
        if isinstance(pins[0], int) and pins[0] == pins[1]:
            issues.append(doc.issue((*path, "latch_pin"), "the latch and the ignition need pins of their own"))
        return issues

    # -- life --------------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._open_pins(loop)
        self.log.info("latch held on pin %d, ignition on pin %d (%s)", self.conf["latch_pin"],
                      self.conf["ignition_pin"], "mock pins" if self.mock else "GPIO")
        await self._publish_latch()
        await self.hub.announce("binary_sensor", "ignition", {
            "name": "Ignition", "state_topic": self.hub.topic("ignition"), "payload_on": "ON", "payload_off": "OFF",
            "device_class": "power"})
        await self.hub.announce("binary_sensor", "power_latch", {
            "name": "Power latch", "state_topic": self.hub.topic("power"), "value_template": "{{ value_json.latch }}",
            "payload_on": "ON", "payload_off": "OFF", "device_class": "power"})
        filters = [self.hub.topic("power", "set")]
        if self.mock:
            filters.append(topics.sim(self.hub.home, self.hub.id, f"pin{self.conf['ignition_pin']}", "set"))
        try:
            # subscribed before `ignition` is first published: whoever sees it may drive the pins
            async with self.hub.subscribe(filters) as messages, asyncio.TaskGroup() as tasks:
                # Runs for the job's life: turns ignition levels into key-on / key-off after debounce.
                tasks.create_task(self._ignition_loop(), name="power-ignition")
                async for msg in messages:
                    await self._on_message(tasks, msg.topic.value, bytes(msg.payload or b""))  # type: ignore[arg-type]
        finally:
            if self._deadline_task is not None:
                self._deadline_task.cancel()
            for device in (self._input, self._latch):
                device.close()

    def _open_pins(self, loop: asyncio.AbstractEventLoop) -> None:
        from gpiozero import DigitalInputDevice, DigitalOutputDevice

        factory = None
        if self.mock:
            from gpiozero.pins.mock import MockFactory
            factory = MockFactory()
        c = self.conf
        self._latch = DigitalOutputDevice(c["latch_pin"], initial_value=True, pin_factory=factory)
        # no pull: the ignition sense circuit (an optocoupler or divider) drives the pin both ways
        self._input = DigitalInputDevice(c["ignition_pin"], pull_up=None, active_state=bool(c["active_high"]),
                                         pin_factory=factory)
        if self.mock:
            self._drive(c["sim_ignition"] == "ON" if c["active_high"] else c["sim_ignition"] == "OFF")
        # gpiozero calls these from its own thread (synchronously under the mock factory)
        self._input.when_activated = lambda: loop.call_soon_threadsafe(self._levels.put_nowait, True)
        self._input.when_deactivated = lambda: loop.call_soon_threadsafe(self._levels.put_nowait, False)
        self._levels.put_nowait(bool(self._input.value))

    def _drive(self, high: bool) -> None:
        """Set the level of the mock ignition pin."""
        pin = self._input.pin
        if high:
            pin.drive_high()
        else:
            pin.drive_low()

    async def _on_message(self, tasks: asyncio.TaskGroup, topic: str, payload: bytes) -> None:
        text = payload.decode(errors="replace").strip()
        if topic == self.hub.topic("power", "set"):
            if text == "release":
                await self._reply("released", await self.release("rules"))
            elif text == "shutdown":
                # Started per command; ends when the shutdown command returns (or times out).
                tasks.create_task(self._shutdown(), name="power-shutdown")
            else:
                self.log.warning("dropped an unknown command on %s: %r (shutdown, release)", topic, text[:200])
        elif text in ("0", "1"):  # the mock ignition pin, driven by a test or a scenario
            self._drive(text == "1")
        else:
            self.log.warning("dropped a malformed message on %s: %r (0 or 1)", topic, text[:200])

    async def _ignition_loop(self) -> None:
        level = await self._levels.get()
        while True:
            if level:
                await self._key_on()
                level = await self._levels.get()
                continue
            try:  # off: it must stay off for `debounce` seconds (a starter motor dips the supply)
                async with asyncio.timeout(self.conf["debounce"]):
                    level = await self._levels.get()
                continue
            except TimeoutError:
                pass
            await self._key_off()
            level = await self._levels.get()

    async def _key_on(self) -> None:
        if self.ignition is True:
            return
        self.ignition = True
        if self._deadline_task is not None:
            self._deadline_task.cancel()
            self._deadline_task = None
        if self.sequence == "running":
            self.sequence = "cancelled"
            self.log.info("key on during the key-off sequence: cancelled, latch kept")
        elif self.sequence == "released":
            self.sequence = "idle"  # power came back (on a real car the Pi boots afresh)
        self.deadline = None
        self._latch.on()
        await self._publish_ignition()
        await self._publish_latch()

    async def _key_off(self) -> None:
        if self.ignition is False:
            return
        self.ignition = False
        if self._latch.value:
            self.sequence = "running"
            self.deadline = time.time() + float(self.conf["deadline"])
            # Started at key-off; ends at the deadline (releasing the latch) or when key-on cancels it.
            self._deadline_task = asyncio.create_task(self._deadline_after(float(self.conf["deadline"])),
                                                      name="power-deadline")
        await self._publish_latch()
        await self._publish_ignition()

    async def _deadline_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._deadline_task = None
        self.log.warning("hard deadline of %g s after key-off reached: releasing the latch", seconds)
        await self.release("deadline")

    async def release(self, why: str) -> str:
        """Open the latch (the Pi loses power) unless the ignition is on."""
        if self.ignition is not False:  # on, or not yet known (within the first debounce)
            return "refused"
        if self._deadline_task is not None and why != "deadline":
            self._deadline_task.cancel()
            self._deadline_task = None
        if self._latch.value:
            self._latch.off()
            self.sequence = "released"
            self.log.info("latch released (%s)", why)
            await self._publish_latch()
        return "released"

    async def _shutdown(self) -> None:
        if self.ignition is not False:
            await self._reply("shutdown", "refused")
            return
        cmd = [str(part) for part in self.conf["shutdown"]]
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL)
            try:
                async with asyncio.timeout(float(self.conf["shutdown_timeout"])):
                    rc = await proc.wait()
            except TimeoutError:
                proc.kill()
                rc = await proc.wait()
        except OSError as exc:
            self.log.error("shutdown command %s failed: %s", cmd, exc)
            rc = -1
        if rc != 0:
            self.log.error("shutdown command %s exited with %s", cmd, rc)
        await self._reply("shutdown", "done" if rc == 0 else "failed")

    async def _reply(self, what: str, result: str) -> None:
        await self._publish(self.hub.topic("power", what), result, qos=1)

    async def _publish_ignition(self) -> None:
        await self._publish(self.hub.topic("ignition"), "ON" if self.ignition else "OFF", qos=1, retain=True)

    async def _publish_latch(self) -> None:
        latch = bool(self._latch.value)
        state = {"latch": "ON" if latch else "OFF", "sequence": self.sequence,
                 "deadline": round(self.deadline) if self.deadline and self.sequence == "running" else None}
        await self._publish(self.hub.topic("power"), json.dumps(state, separators=(",", ":")), qos=1, retain=True)
        if self.mock:
            await self._publish(topics.sim(self.hub.home, self.hub.id, f"pin{self.conf['latch_pin']}", "level"),
                                "1" if latch else "0", retain=True)

    async def _publish(self, topic: str, payload: str, qos: int = 0, retain: bool = False) -> None:
        with contextlib.suppress(BrokerError, aiomqtt.MqttError):  # the state is re-sent on the next change
            await self.hub.publish(topic, payload, qos=qos, retain=retain)
