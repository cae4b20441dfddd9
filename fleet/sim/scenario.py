"""A scenario: the inputs `fleet sim` drives and what it expects to see, as a small hjson file.

```hjson
{
  name: A short drive
  steps: [
    { say: "every node boots and takes its config", expect: "configured", within: 90 }
    { at: 5, say: "the bedroom gets cold", sim: "thermostat/bme280-0x76", payload: {temperature: 17} }
    { expect: {topic: "{home}/thermostat/heater", payload: "ON"}, within: 60 }
  ]
}
```

Each step does one thing: `sim: "<id>/<part>"` publishes `payload` on `<home>/_sim/<id>/<part>/set`
(docs/PROTOCOL.md section 8); `publish: topic` publishes `payload` (`qos`, `retain`); `node: <id>` with
`do: kill` (SIGKILL, it stays down), `start` or `restart`; `wait: seconds`; `expect: …` waits up to
`within` seconds (default 10). An expectation is an event in the hub rules' syntax (docs/HUB.md): a job's
event (`power.ignition_off`), or `{topic, payload}`, or `{topic, field, equals|not|above|below}`; it holds
when the last message on its topic already matches or a matching one arrives in time. The special
expectation `configured` holds once every virtual node is online running the config the server sent.
`at` (seconds from the start) delays a step; `say` describes it. `{home}` and `{hub}` stand for the topic
root and the hub's id. Errors are reported as FILE:LINE:COL: path.to.key: message, all at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet import hjsonpos
from fleet.errors import ConfigError, ConfigIssue, Position, did_you_mean
from fleet.hjsonpos import Document, KeyPath

ACTIONS = ("sim", "publish", "node", "wait", "expect")
STEP_KEYS = (*ACTIONS, "at", "say", "payload", "qos", "retain", "do", "within")
NODE_VERBS = ("kill", "start", "restart")
CONFIGURED = "configured"
DEFAULT_WITHIN = 10.0


@dataclass(frozen=True)
class Step:
    """One line of the scenario: `kind` is one of ACTIONS; `where` is its position in the file."""

    kind: str
    where: str
    say: str
    at: float | None = None
    topic: str = ""  # sim, publish: the topic published on
    payload: str = ""
    qos: int = 1
    retain: bool = False
    node: str = ""
    verb: str = ""
    seconds: float = 0.0  # wait: how long; expect: within
    condition: Any = None  # expect: a hub.jobs.rules.Condition, or CONFIGURED

    def describe(self) -> str:
        if self.say:
            return self.say
        if self.kind in ("sim", "publish"):
            return f"{self.topic} ← {self.payload}"
        if self.kind == "node":
            return f"{self.verb} {self.node}"
        if self.kind == "wait":
            return f"wait {self.seconds:g} s"
        if self.condition == CONFIGURED:
            return "every node online with its config"
        c = self.condition
        what = f" {c.payload}" if c.payload is not None else ""
        if c.field:
            what = f" {'.'.join(c.field)} {c.op} {c.value!r}"
        return f"{c.topic}{what}"


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    steps: tuple[Step, ...]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"))


def load(path: str | Path, home: str, hub: str) -> Scenario:
    """Read and check a scenario file. Raises ConfigError with every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(Position(str(path), 1, 1), "", f"cannot read: {exc.strerror}")]) from None
    return loads(text, str(path), home, hub)


def loads(text: str, filename: str, home: str, hub: str) -> Scenario:
    doc = hjsonpos.loads(text, filename)
    issues: list[ConfigIssue] = list(doc.duplicates)
    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise ConfigError([*issues, doc.issue((), "a scenario is an object with steps: [ … ]")])
    for key in data:
        if key not in ("name", "steps"):
            issues.append(doc.issue((key,), f"unknown key{did_you_mean(key, ['name', 'steps'])}"))
    steps = []
    for i, spec in enumerate(data["steps"]):
        step = _step(doc, ("steps", i), spec, home, hub, issues)
        if step is not None:
            steps.append(step)
    if issues:
        raise ConfigError(issues)
    return Scenario(str(data.get("name") or Path(filename).stem), filename, tuple(steps))


def _step(doc: Document, path: KeyPath, spec: Any, home: str, hub: str, issues: list[ConfigIssue]) -> Step | None:
    def problem(at: KeyPath, message: str) -> None:
        issues.append(doc.issue(at, message))

    if not isinstance(spec, dict):
        problem(path, f"a step is an object like {{sim: …}} or {{expect: …}}, found {spec!r}")
        return None
    for key in spec:
        if key not in STEP_KEYS:
            problem((*path, key), f"unknown key{did_you_mean(key, list(STEP_KEYS))}")
    kinds = [k for k in ACTIONS if k in spec]
    if len(kinds) != 1:
        problem(path, f"a step does exactly one of {', '.join(ACTIONS)}" + (f", found {kinds}" if kinds else ""))
        return None
    kind = kinds[0]
    value = spec[kind]
    pos = doc.key_pos((*path, kind))
    fields: dict[str, Any] = {"kind": kind, "where": f"{pos.line}:{pos.col}", "say": str(spec.get("say", ""))}
    at = spec.get("at")
    if at is not None:
        if isinstance(at, bool) or not isinstance(at, int | float) or at < 0:
            problem((*path, "at"), f"expected seconds ≥ 0, found {at!r}")
        else:
            fields["at"] = float(at)

    def seconds(key: str, default: float) -> float:
        v = spec.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            problem((*path, key), f"expected seconds ≥ 0, found {v!r}")
            return default
        return float(v)

    def topic(text: Any, at: KeyPath) -> str:
        if not isinstance(text, str) or not text:
            problem(at, "expected a topic")
            return ""
        t = text.replace("{home}", home).replace("{hub}", hub)
        if "+" in t or "#" in t:
            problem(at, f"{text!r}: no wildcards in a topic to publish on")
        return t

    if kind in ("sim", "publish"):
        if "payload" not in spec:
            problem(path, f"{kind}: needs a payload")
        fields["payload"] = _text(spec.get("payload", ""))
        if kind == "sim":
            parts = value.split("/") if isinstance(value, str) else []
            if len(parts) != 2 or not all(parts):
                problem((*path, kind), f"expected \"<id>/<part>\" like \"car/pin17\", found {value!r}")
                return None
            fields["topic"] = f"{home}/_sim/{parts[0].replace('{hub}', hub)}/{parts[1]}/set"
        else:
            fields["topic"] = topic(value, (*path, kind))
            fields["retain"] = bool(spec.get("retain", False))
            qos = spec.get("qos", 1)
            if qos not in (0, 1, 2):
                problem((*path, "qos"), f"expected 0, 1 or 2, found {qos!r}")
            fields["qos"] = qos if qos in (0, 1, 2) else 1
    elif kind == "node":
        verb = spec.get("do")
        if verb not in NODE_VERBS:
            problem((*path, "do") if "do" in spec else path, f"node: needs do: {' | '.join(NODE_VERBS)}")
        fields.update(node=str(value).replace("{hub}", hub), verb=verb)
    elif kind == "wait":
        fields["seconds"] = seconds("wait", 0.0)
    else:
        fields["seconds"] = seconds("within", DEFAULT_WITHIN)
        if value == CONFIGURED:
            fields["condition"] = CONFIGURED
        else:
            condition = _condition(value, (*path, "expect"), home, hub, problem)
            if condition is None:
                return None
            fields["condition"] = condition
    return Step(**fields)


def _condition(spec: Any, path: KeyPath, home: str, hub: str, problem: Any) -> Any:
    """An expectation in the hub rules' event syntax, compiled by the rules job's own compiler."""
    from hub import jobs
    from hub.jobs.rules import RuleCompiler

    def lookup(name: str) -> Any:
        try:
            return jobs.load(name)
        except KeyError:
            return None
        except Exception as exc:  # a job whose module does not load here: its events cannot be named
            return f"did not load ({type(exc).__name__}: {exc})"

    compiler = RuleCompiler(lookup, home, hub)
    condition = compiler.event(spec, path)
    for at, message in compiler.problems:
        problem(at, message)
    if condition is None and not compiler.problems:
        problem(path, compiler.off or "not an event")
    return None if compiler.problems else condition
