"""Rules against a real Mosquitto: a serial sequence with a reply and a timeout, a cancel event, a JSON
field condition, parallel steps; and the load-time check that refuses an unknown action at its line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fleet.errors import ConfigError
from fleet.mqtt import BrokerSettings
from hub import config, jobs
from hub.job import Action, Event, Job
from tests.hub_helpers import Watch, running_hub


class DeviceJob(Job):
    """A job with actions and events to drive: `go` is answered `done` after 50 ms, `hang` never."""

    NAME: ClassVar[str] = "dev"
    ACTIONS: ClassVar[dict[str, Action]] = {
        "go": Action("dev/set", "go", reply="dev", reply_payload="done"),
        "hang": Action("dev/set", "hang", reply="dev", reply_payload="done", timeout=0.5),
    }
    EVENTS: ClassVar[dict[str, Event]] = {"trigger": Event("dev/event", "fire"), "abort": Event("dev/event", "abort")}

    async def run(self) -> None:
        async with self.hub.subscribe(self.hub.topic("dev", "set")) as commands:
            async for msg in commands:
                if msg.payload == b"go":
                    await asyncio.sleep(0.05)
                    await self.hub.publish(self.hub.topic("dev"), "busy")  # not the awaited reply
                    await self.hub.publish(self.hub.topic("dev"), "done")


@pytest.fixture(autouse=True)
def dev_job() -> Any:
    jobs.register("dev", DeviceJob)
    yield
    jobs.REGISTRY.pop("dev")


RULES = """
id: r1
jobs: ["dev", "rules"]
rules: {
  seq: {
    on: dev.trigger
    cancel: dev.abort
    do: [
      "dev.go"
      "dev.hang"
      { publish: "{home}/garage/light/set", payload: "ON" }
    ]
  }
  door: {
    on: { topic: "{home}/+/door", field: "state.open", equals: true }
    cancel: [ "dev.abort", { topic: "{home}/+/door", field: "state.open", equals: false } ]
    do: [
      { wait: 5 }
      { publish: "{home}/garage/alarm/set", payload: "ON" }
    ]
  }
  both: {
    on: { topic: "{home}/x/speed", field: "value", above: 100 }
    mode: parallel
    do: [
      "dev.hang"
      { publish: "{home}/x/beep/set", payload: "1", reply: "{home}/x/beep", timeout: 3 }
    ]
  }
}
"""


def reports(w: Watch, rule: str) -> list[dict[str, Any]]:
    return [s.json() for s in w.on(f"{w.settings.home}/r1/rules/{rule}")]


async def test_serial_sequence_waits_for_replies_and_honours_timeouts(settings: BrokerSettings, tmp_path: Path) -> None:
    home = settings.home
    async with Watch(settings, f"{home}/r1/rules/#", f"{home}/garage/#", f"{home}/r1/dev/set") as w, \
            running_hub(RULES, settings, tmp_path):
        await asyncio.sleep(0.3)  # the rules job subscribes
        await w.publish(f"{home}/r1/dev/event", "not this one")
        await w.publish(f"{home}/r1/dev/event", "fire")
        await w.wait(lambda s: s.json()["event"] == "finished", what="seq finished")
        steps = reports(w, "seq")
        assert [(r["event"], r.get("step"), r.get("result")) for r in steps] == [
            ("started", None, None), ("step", 1, "ok"), ("step", 2, "timeout"), ("step", 3, "ok"),
            ("finished", None, "failed")]
        assert steps[0]["run"] == 1 and steps[0]["trigger"] == f"{home}/r1/dev/event"
        assert steps[1]["action"] == "dev.go" and steps[1]["ms"] >= 40  # it waited for `done`, not `busy`
        assert 450 <= steps[2]["ms"] < 2000  # the 0.5 s timeout
        # The actions went out in order, the light only after the timeout.
        order = [s.payload for s in w.seen if s.topic in (f"{home}/r1/dev/set", f"{home}/garage/light/set")]
        assert order == ["go", "hang", "ON"]


async def test_a_cancel_event_stops_a_running_sequence(settings: BrokerSettings, tmp_path: Path) -> None:
    home = settings.home
    async with Watch(settings, f"{home}/r1/rules/#", f"{home}/garage/#") as w, \
            running_hub(RULES, settings, tmp_path) as hub:
        await asyncio.sleep(0.3)
        await w.publish(f"{home}/side/door", "not json")  # logged and dropped, never fatal
        await w.publish(f"{home}/side/door", '{"state": {"open": true}}')
        await w.wait(lambda s: s.topic.endswith("/door") and s.json()["event"] == "started", what="door started")
        await w.publish(f"{home}/side/door", '{"state": {"open": true}}')  # ignored: a run is going on
        await w.publish(f"{home}/side/door", '{"state": {"open": false}}')
        cancelled = await w.wait(lambda s: s.json()["event"] == "cancelled", what="cancelled")
        assert cancelled.json() == {**cancelled.json(), "run": 1, "step": 1}
        await asyncio.sleep(0.3)
        assert not w.on(f"{home}/garage/alarm/set")
        assert [r["event"] for r in reports(w, "door")] == ["started", "cancelled"]
        assert hub.states["rules"] == {"state": "running", "restarts": 0, "error": None}


async def test_parallel_steps_run_together(settings: BrokerSettings, tmp_path: Path) -> None:
    home = settings.home
    async with Watch(settings, f"{home}/r1/rules/#", f"{home}/x/#") as w, running_hub(RULES, settings, tmp_path):
        await asyncio.sleep(0.3)
        await w.publish(f"{home}/x/speed", '{"value": 50}')
        await w.publish(f"{home}/x/speed", '{"value": 120}')
        await w.wait(lambda s: s.topic == f"{home}/x/beep/set", what="beep")
        await w.publish(f"{home}/x/beep", "beeped")
        done = await w.wait(lambda s: s.topic.endswith("/both") and s.json()["event"] == "finished", what="both")
        steps = {r["step"]: r for r in reports(w, "both") if r["event"] == "step"}
        assert steps[2]["result"] == "ok" and steps[1]["result"] == "timeout"
        assert steps[2]["time"] < steps[1]["time"] and done.json()["result"] == "failed"
        assert len([r for r in reports(w, "both") if r["event"] == "started"]) == 1


def test_an_unknown_action_is_refused_at_its_line() -> None:
    text = RULES.replace('"dev.hang"\n      { publish: "{home}/garage', '"dev.hnag"\n      { publish: "{home}/garage')
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "dev.hnag" in t)
    with pytest.raises(ConfigError) as err:
        config.loads(text, "hub.hjson")
    (issue,) = err.value.issues
    assert issue.pos.line == line and issue.path == "rules.seq.do[1]"
    assert "job dev announces no action 'hnag' (did you mean hang?)" in str(issue)


@pytest.mark.parametrize(("bad", "where", "message"), [
    ('on: dev.trigger', 'on: dev.trigerr', "announces no event 'trigerr'"),
    ('"dev.go"', '"cam.go"', "no job 'cam' in this hub's jobs"),
    ('mode: parallel', 'mode: paralel', "expected serial or parallel"),
    ('{ wait: 5 }', '{ wait: 5, publish: "a" }', "exactly one of"),
    ('field: "value", above: 100', 'field: "value", above: "fast"', "expected a number"),
    ('{ publish: "{home}/garage/light/set"', '{ publish: "{home}/garage/+/set"', "no wildcards"),
])
def test_rule_errors_name_their_place(bad: str, where: str, message: str) -> None:
    text = RULES.replace(bad, where, 1)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if where.split(",")[0] in t)
    with pytest.raises(ConfigError) as err:
        config.loads(text, "hub.hjson")
    assert any(i.pos.line == line and message in i.message for i in err.value.issues), str(err.value)


def test_hub_hjson_errors_and_the_cli(tmp_path: Path) -> None:
    bad = tmp_path / "hub.hjson"
    bad.write_text('id: Car!\njobs: ["rules", "stast"]\nrestart: { min: 0 }\nrulez: {}\n'
                   'rules: { r: { on: "stats.x", do: ["rules.y"] } }\n')
    with pytest.raises(ConfigError) as err:
        config.load(bad)
    text = str(err.value)
    assert f"{bad}:1:1: id: device id 'Car!'" in text
    assert f"{bad}:2:17: jobs[1]: no job named 'stast' (did you mean stats?)" in text
    assert f"{bad}:3:12: restart.min: expected a number of seconds > 0" in text
    assert f"{bad}:4:1: rulez: unknown key (did you mean rules?)" in text
    assert f"{bad}:5:15: rules.r.on: no job 'stats'" in text  # stats is not among this hub's jobs
    assert f"{bad}:5:35: rules.r.do[0]: job rules announces no action 'y'" in text
    out = subprocess.run([sys.executable, "-m", "fleet.cli", "hub", "run", "--config", str(bad), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"{bad}:2:17: jobs[1]" in out.stderr
    # `--jobs` turns jobs off: rules that use them are left out, not refused.
    cfg = config.loads(RULES, "hub.hjson", only=["rules"])
    assert cfg.disabled == ["dev"] and cfg.rules("home") == []
