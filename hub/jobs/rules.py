"""The rules job: events → action sequences, smartcar's controller on MQTT.

A rule in `hub.hjson`:

    key_off: {
      on: power.ignition_off                       # a job's event, or {topic: …, payload: …}, or a JSON field test
      cancel: power.ignition_on                    # optional: cancels a running sequence
      mode: serial                                 # or parallel
      do: [
        camera.stop                                # a job's action: publish, then wait for its reply
        {action: "upload.flush", timeout: 60}
        {publish: "{home}/garage/light/set", payload: "ON", reply: "{home}/garage/light", reply_payload: "ON"}
        {wait: 2}
      ]
    }

Each run is reported on `<home>/<hub>/rules/<rule>` (PROTOCOL.md section 6). Events and replies are
changes: retained messages (what a broker replays on subscribe) never trigger a rule nor answer a step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt

from fleet import topics
from fleet.errors import BrokerError, did_you_mean
from fleet.hjsonpos import KeyPath
from hub.job import Job

MODES = ("serial", "parallel")
COMPARISONS = ("equals", "not", "above", "below")
RULE_KEYS = ("on", "cancel", "mode", "do", "stop_on_failure")
EVENT_KEYS = ("event", "topic", "payload", "field", *COMPARISONS)
STEP_KEYS = ("action", "publish", "payload", "qos", "retain", "reply", "reply_payload", "timeout", "wait")
DEFAULT_TIMEOUT = 10.0

# What compile_rules needs to know of a job: its class, or why it does not run (str), or None: no such job.
Lookup = Callable[[str], type[Job] | str | None]


@dataclass(frozen=True)
class Condition:
    """A message that is an event: on `topic` (a filter), with `payload`, or whose JSON `field` compares."""

    topic: str
    payload: str | None = None
    field: tuple[str, ...] = ()
    op: str = ""
    value: Any = None

    def test(self, topic: str, payload: bytes) -> bool:
        """Whether the message is this event. ValueError when a field condition meets a payload that is
        not a JSON object holding the field's path (the caller logs it with its topic)."""
        if not topics.matches(self.topic, topic):
            return False
        if self.payload is not None and payload != self.payload.encode():
            return False
        if not self.field:
            return True
        try:
            value: Any = json.loads(payload)
            for key in self.field:
                value = value[key]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"no field {'.'.join(self.field)} in {payload[:80]!r}") from exc
        if self.op == "equals":
            return bool(value == self.value)
        if self.op == "not":
            return bool(value != self.value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"field {'.'.join(self.field)} is {value!r}, not a number")
        return value > self.value if self.op == "above" else value < self.value


@dataclass(frozen=True)
class Step:
    """One action: publish `payload` on `topic`, done at once or when `reply` brings `reply_payload`
    (any payload when None) within `timeout`; or, with `wait`, a pause of that many seconds."""

    label: str
    topic: str = ""
    payload: str = ""
    qos: int = 1
    retain: bool = False
    reply: str | None = None
    reply_payload: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    wait: float = 0.0


@dataclass(frozen=True)
class Rule:
    name: str
    on: tuple[Condition, ...]
    cancel: tuple[Condition, ...]
    mode: str
    steps: tuple[Step, ...]
    stop_on_failure: bool = False


def compile_rules(section: Any, lookup: Lookup, home: str, hub_id: str
                  ) -> tuple[list[Rule], list[tuple[KeyPath, str]], dict[str, str]]:
    """The rules of the `rules` section, the problems found (key path in the section, message), and the
    rules left out because a job they use does not run (rule → why)."""
    c = RuleCompiler(lookup, home, hub_id)
    rules: list[Rule] = []
    skipped: dict[str, str] = {}
    if not isinstance(section, dict):
        return [], [((), "the rules section must be an object of rule name → rule")], {}
    for name, spec in section.items():
        if topics.check_device_id(name) is not None:
            c.problem((name,), "a rule name must match [a-z0-9_-]{1,32}")
        c.off = None
        rule = c.rule(name, spec)
        if c.off is not None:
            skipped[name] = c.off
        elif rule is not None:
            rules.append(rule)
    return rules, c.problems, skipped


class RuleCompiler:
    """Compiles rule specs and their events, collecting problems instead of stopping at the first; public
    because the simulator (fleet/sim/scenario.py) compiles its expectations in the same event syntax."""

    def __init__(self, lookup: Lookup, home: str, hub_id: str) -> None:
        self.lookup = lookup
        self.home = home
        self.hub_id = hub_id
        self.problems: list[tuple[KeyPath, str]] = []
        self.off: str | None = None  # why the rule being compiled cannot run

    def problem(self, path: KeyPath, message: str) -> None:
        self.problems.append((path, message))

    def raw_topic(self, text: Any, path: KeyPath, wildcards: bool) -> str | None:
        if not isinstance(text, str) or not text:
            self.problem(path, "expected a topic")
            return None
        topic = text.replace("{home}", self.home).replace("{hub}", self.hub_id)
        if not wildcards and ("+" in topic or "#" in topic):
            self.problem(path, f"{text!r}: no wildcards in a topic to publish on")
            return None
        parts = topic.split("/")
        if any(("+" in p and p != "+") or ("#" in p and p != "#") for p in parts) or "#" in parts[:-1]:
            self.problem(path, f"{text!r} is not a valid topic filter")
            return None
        return topic

    def job_part(self, ref: Any, path: KeyPath, kind: str) -> tuple[type[Job], str] | None:
        """The job class and the action/event name of a `job.name` reference."""
        if not isinstance(ref, str) or "." not in ref:
            self.problem(path, f"expected job.{kind} (e.g. camera.stop), found {ref!r}")
            return None
        job, _, name = ref.partition(".")
        cls = self.lookup(job)
        if cls is None:
            self.problem(path, f"no job {job!r} in this hub's jobs")
            return None
        if isinstance(cls, str):
            self.off = self.off or f"job {job} {cls}"
            return None
        offered = cls.ACTIONS if kind == "action" else cls.EVENTS
        if name not in offered:
            have = ", ".join(sorted(offered)) or "none"
            self.problem(path, f"job {job} announces no {kind} {name!r}{did_you_mean(name, list(offered))}"
                               f" ({kind}s: {have})")
            return None
        return cls, name

    def unknown_keys(self, spec: dict[str, Any], allowed: tuple[str, ...], path: KeyPath) -> None:
        for key in spec:
            if key not in allowed:
                self.problem((*path, key), f"unknown key{did_you_mean(key, allowed)}")

    def number(self, spec: dict[str, Any], key: str, path: KeyPath, default: float) -> float:
        value = spec.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            self.problem((*path, key), f"expected a number of seconds ≥ 0, found {value!r}")
            return default
        return float(value)

    def rule(self, name: str, spec: Any) -> Rule | None:
        path: KeyPath = (name,)
        if not isinstance(spec, dict):
            self.problem(path, "a rule must be an object with on, do and optionally cancel, mode")
            return None
        before = len(self.problems)
        self.unknown_keys(spec, RULE_KEYS, path)
        if "on" not in spec:
            self.problem(path, "missing 'on': the event that starts the rule")
        on = self.events(spec.get("on"), (*path, "on")) if "on" in spec else ()
        cancel = self.events(spec["cancel"], (*path, "cancel")) if "cancel" in spec else ()
        mode = spec.get("mode", "serial")
        if mode not in MODES:
            self.problem((*path, "mode"), f"expected serial or parallel, found {mode!r}")
        stop = spec.get("stop_on_failure", False)
        if not isinstance(stop, bool):
            self.problem((*path, "stop_on_failure"), f"expected true or false, found {stop!r}")
        do = spec.get("do")
        steps: list[Step] = []
        if not isinstance(do, list) or not do:
            self.problem((*path, "do"), "expected a non-empty list of actions")
        else:
            for i, item in enumerate(do):
                step = self.step(item, (*path, "do", i))
                if step is not None:
                    steps.append(step)
        if len(self.problems) > before or self.off is not None:
            return None
        return Rule(name, on, cancel, mode, tuple(steps), bool(stop))

    def events(self, spec: Any, path: KeyPath) -> tuple[Condition, ...]:
        items = spec if isinstance(spec, list) else [spec]
        if not items:
            self.problem(path, "expected an event or a list of events")
        out = []
        for i, item in enumerate(items):
            cond = self.event(item, (*path, i) if isinstance(spec, list) else path)
            if cond is not None:
                out.append(cond)
        return tuple(out)

    def event(self, spec: Any, path: KeyPath) -> Condition | None:
        if isinstance(spec, str):
            spec = {"event": spec}
            ref_path = path
        elif isinstance(spec, dict):
            ref_path = (*path, "event")
            self.unknown_keys(spec, EVENT_KEYS, path)
        else:
            self.problem(path, f"expected job.event or {{topic: …}}, found {spec!r}")
            return None
        if "event" in spec:
            if set(spec) - {"event"}:
                self.problem(path, "a job's event takes no other keys (use topic: … for a condition)")
            found = self.job_part(spec["event"], ref_path, "event")
            if found is None:
                return None
            event = found[0].EVENTS[found[1]]
            return Condition(f"{self.home}/{self.hub_id}/{event.topic}", event.payload)
        if "topic" not in spec:
            self.problem(path, "expected event: job.event or topic: …")
            return None
        topic = self.raw_topic(spec["topic"], (*path, "topic"), wildcards=True)
        payload = spec.get("payload")
        if payload is not None and not isinstance(payload, str):
            payload = json.dumps(payload) if not isinstance(payload, bool) else ("true" if payload else "false")
        ops = [k for k in COMPARISONS if k in spec]
        field = spec.get("field")
        if field is None and ops:
            self.problem((*path, ops[0]), "a comparison needs field: the JSON field it tests")
        if field is not None:
            if not isinstance(field, str) or not field:
                self.problem((*path, "field"), "expected a field path like value or engine.rpm")
                return None
            if len(ops) != 1:
                self.problem((*path, "field"), f"give exactly one of {', '.join(COMPARISONS)}")
                return None
            value = spec[ops[0]]
            if ops[0] in ("above", "below") and (isinstance(value, bool) or not isinstance(value, int | float)):
                self.problem((*path, ops[0]), f"expected a number, found {value!r}")
                return None
            if topic is None:
                return None
            return Condition(topic, payload, tuple(field.split(".")), ops[0], value)
        return None if topic is None else Condition(topic, payload)

    def step(self, spec: Any, path: KeyPath) -> Step | None:
        if isinstance(spec, str):
            spec = {"action": spec}
            ref_path = path
        elif isinstance(spec, dict):
            ref_path = (*path, "action")
            self.unknown_keys(spec, STEP_KEYS, path)
        else:
            self.problem(path, f"expected job.action, {{publish: …}} or {{wait: …}}, found {spec!r}")
            return None
        kinds = [k for k in ("action", "publish", "wait") if k in spec]
        if len(kinds) != 1:
            self.problem(path, "a step is exactly one of action: job.action, publish: topic, wait: seconds")
            return None
        if kinds[0] == "wait":
            if set(spec) != {"wait"}:
                self.problem(path, "a wait step takes no other keys")
            seconds = self.number(spec, "wait", path, 0.0)
            return Step(f"wait {seconds:g}", wait=seconds)
        if kinds[0] == "action":
            extra = set(spec) - {"action", "timeout"}
            if extra:
                self.problem((*path, sorted(extra)[0]), "a job's action takes only timeout (use publish: … for more)")
            found = self.job_part(spec["action"], ref_path, "action")
            if found is None:
                return None
            action = found[0].ACTIONS[found[1]]
            base = f"{self.home}/{self.hub_id}/"
            return Step(spec["action"], base + action.topic, action.payload,
                        reply=base + action.reply if action.reply else None, reply_payload=action.reply_payload,
                        timeout=self.number(spec, "timeout", path, action.timeout))
        topic = self.raw_topic(spec["publish"], (*path, "publish"), wildcards=False)
        reply = self.raw_topic(spec["reply"], (*path, "reply"), wildcards=True) if "reply" in spec else None
        payload = spec.get("payload", "")
        if not isinstance(payload, str):
            payload = json.dumps(payload)
        qos = spec.get("qos", 1)
        if qos not in (0, 1, 2) or isinstance(qos, bool):
            self.problem((*path, "qos"), f"expected 0, 1 or 2, found {qos!r}")
        retain = spec.get("retain", False)
        if not isinstance(retain, bool):
            self.problem((*path, "retain"), f"expected true or false, found {retain!r}")
        reply_payload = spec.get("reply_payload")
        if reply_payload is not None and not isinstance(reply_payload, str):
            reply_payload = json.dumps(reply_payload)
        if reply_payload is not None and reply is None:
            self.problem((*path, "reply_payload"), "reply_payload needs reply: the topic that answers")
        if topic is None:
            return None
        return Step(f"publish {topic}", topic, payload, qos if qos in (0, 1, 2) else 1, bool(retain), reply,
                    reply_payload, self.number(spec, "timeout", path, DEFAULT_TIMEOUT))


class RulesJob(Job):
    """Runs the rules of its section: each trigger starts a run of the rule's steps (one run at a time per
    rule: a trigger during a run is ignored), a cancel event stops a running one."""

    NAME = "rules"

    def __init__(self, hub: Any, config: dict[str, Any]) -> None:
        super().__init__(hub, config)
        self.rules: list[Rule] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, int] = {}
        self._reports: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def _lookup(self, name: str) -> type[Job] | str:
        job = self.hub.job(name)
        return "is not running" if job is None else type(job)

    async def run(self) -> None:
        # hub.hjson was checked at load: what is left here are rules whose jobs do not run.
        rules, problems, skipped = compile_rules(self.config, self._lookup, self.hub.home, self.hub.id)
        for path, message in problems:
            self.log.error("rules.%s: %s", ".".join(map(str, path)), message)
        for name, why in skipped.items():
            self.log.warning("rule %s is off: %s", name, why)
        self.rules = rules
        filters = sorted({c.topic for r in rules for c in (*r.on, *r.cancel)})
        # Started here, ends when the job ends (finally below): publishes run reports in order.
        reporter = asyncio.create_task(self._report_loop(), name="rules-reports")
        try:
            if not filters:
                await asyncio.Event().wait()  # no rules: nothing to watch until the hub stops
            async with self.hub.subscribe(filters) as messages:
                async for msg in messages:
                    if not msg.retain:
                        self.handle(msg.topic.value, bytes(msg.payload or b""))  # type: ignore[arg-type]
        finally:
            runs = list(self._running.values())
            for task in runs:
                task.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reports.join(), 2)
            reporter.cancel()

    def handle(self, topic: str, payload: bytes) -> None:
        """React to one message: cancel the runs it cancels, start the rules it triggers."""
        for rule in self.rules:
            if self._hit(rule.cancel, topic, payload) and (task := self._running.get(rule.name)):
                task.cancel()
            if self._hit(rule.on, topic, payload):
                if rule.name in self._running:
                    self.log.info("rule %s is running: trigger on %s ignored", rule.name, topic)
                    continue
                n = self._runs[rule.name] = self._runs.get(rule.name, 0) + 1
                # Started by a trigger; ends when its steps are done or a cancel event cancels it.
                task = asyncio.create_task(self._run(rule, n, topic), name=f"rule-{rule.name}-{n}")
                self._running[rule.name] = task
                task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        for name, running in list(self._running.items()):
            if running is task:
                del self._running[name]

    def _hit(self, conditions: tuple[Condition, ...], topic: str, payload: bytes) -> bool:
        for cond in conditions:
            try:
                if cond.test(topic, payload):
                    return True
            except ValueError as exc:
                self.log.warning("dropped %s: %s", topic, exc)
        return False

    def report(self, rule: str, **fields: Any) -> None:
        self._reports.put_nowait((rule, {**fields, "time": round(time.time(), 3)}))

    async def _report_loop(self) -> None:
        while True:
            rule, fields = await self._reports.get()
            try:
                await self.hub.publish(self.hub.topic("rules", rule), json.dumps(fields), qos=1)
            except (BrokerError, aiomqtt.MqttError) as exc:
                self.log.warning("report of rule %s lost: %s", rule, exc)
            finally:
                self._reports.task_done()

    async def _run(self, rule: Rule, n: int, trigger: str) -> None:
        self.report(rule.name, run=n, event="started", trigger=trigger)
        results: list[str] = []
        try:
            if rule.mode == "serial":
                for i, step in enumerate(rule.steps, 1):
                    results.append(await self._step(rule, n, i, step))
                    if rule.stop_on_failure and results[-1] != "ok":
                        break
            else:
                results = list(await asyncio.gather(
                    *(self._step(rule, n, i, s) for i, s in enumerate(rule.steps, 1))))
        except asyncio.CancelledError:
            self.report(rule.name, run=n, event="cancelled", step=len(results) + 1)
            raise
        ok = len(results) == len(rule.steps) and all(r == "ok" for r in results)
        self.report(rule.name, run=n, event="finished", result="ok" if ok else "failed")

    async def _step(self, rule: Rule, n: int, i: int, step: Step) -> str:
        started = time.perf_counter()
        result = "ok"
        if step.wait:
            await asyncio.sleep(step.wait)
        elif step.reply is None:
            result = await self._publish(step)
        else:
            async with self.hub.subscribe(step.reply) as replies:
                result = await self._publish(step)
                if result == "ok":
                    try:
                        await asyncio.wait_for(self._reply(replies, step), step.timeout)
                    except TimeoutError:
                        result = "timeout"
        ms = round((time.perf_counter() - started) * 1000, 1)
        self.report(rule.name, run=n, event="step", step=i, action=step.label, result=result, ms=ms)
        if result != "ok":
            self.log.warning("rule %s run %d step %d %s: %s", rule.name, n, i, step.label, result)
        return result

    async def _publish(self, step: Step) -> str:
        try:
            await self.hub.publish(step.topic, step.payload, qos=step.qos, retain=step.retain)
        except (BrokerError, aiomqtt.MqttError) as exc:
            self.log.warning("publish on %s failed: %s", step.topic, exc)
            return "failed"
        return "ok"

    @staticmethod
    async def _reply(replies: Any, step: Step) -> None:
        async for msg in replies:
            if msg.retain:
                continue  # a state from before the step is no answer to it
            if step.reply_payload is None or bytes(msg.payload or b"") == step.reply_payload.encode():
                return
