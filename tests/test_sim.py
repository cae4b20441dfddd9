"""`fleet sim` end to end: the real parts (Mosquitto or the embedded broker, the config server and the
hub as processes, virtual nodes on the MicroPython unix port, the ELM327 emulator, PyAV, asyncssh) on a
short scenario. `mosquitto_sub -t '#' -v` records the traffic; a node killed mid-run shows offline in
the view and on its status topic, and comes back with its config when started again."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet.broker import Mosquitto
from fleet.errors import ConfigError
from fleet.sim import scenario
from fleet.sim.run import Options, Sim
from fleet.sim.view import render_text
from fleet.upy import REPO

SHORT = """
# the test's scenario: boot, a command, a node pulled and plugged in again, key off
{
  name: test drive
  steps: [
    { expect: "configured", within: 90 }
    { expect: { topic: "{home}/{hub}/camera/segment" }, within: 40 }
    { expect: { topic: "{home}/{hub}/obd/RPM", field: "value", above: 0 }, within: 30 }
    { publish: "{home}/room/lamp/set", payload: "ON" }
    { expect: { topic: "{home}/room/lamp", payload: "ON" } }
    { sim: "door/pin4", payload: 0 }
    { wait: 0.2 }
    { sim: "door/pin4", payload: 1 }
    { expect: { topic: "{home}/door/bell/event", payload: "press" } }
    { say: "pull room's plug", node: "room", do: "kill" }
    { expect: { topic: "{home}/room/status", payload: "offline" } }
    { wait: 2 }
    { node: "room", do: "start" }
    { expect: "configured", within: 30 }
    { wait: 1.5 }
    { sim: "{hub}/pin17", payload: 0 }
    { expect: { topic: "{home}/{hub}/power", field: "sequence", equals: "released" }, within: 60 }
  ]
}
"""

BROKEN = """{
  components: {
    _order: ["lamp"]
    lamp: {
      package: .machine.relay
      component: Relay
      constructor_args: {pn: 5}
    }
  }
}
"""

# What docs/PROTOCOL.md says the fleet sends, as topic patterns (sections 1-8): each must be seen.
PROTOCOL = [
    r"{home}/(room|door|thermostat|car)/status", r"{home}/(room|door|thermostat|car)/info",  # 1
    r"{home}/room/lamp", r"{home}/room/lamp/set", r"{home}/room/climate", r"{home}/door/bell/event",  # 2
    r"{home}/log/info/(room|door|thermostat|car)",  # 3
    r"{home}/config/request/room", r"{home}/room/config", r"{home}/config/ack/room",  # 4
    r"homeassistant/switch/room/lamp/config", r"homeassistant/sensor/room/climate_temperature/config",  # 5
    r"{home}/car/jobs", r"{home}/car/obd/status", r"{home}/car/obd/RPM", r"{home}/car/camera",  # 6
    r"{home}/car/camera/segment", r"{home}/car/upload", r"{home}/car/upload/done", r"{home}/car/ignition",
    r"{home}/car/power", r"{home}/car/rules/key_off", r"{home}/car/stats",
    r"{home}/config/server/[a-z0-9_-]+",  # 7
    r"{home}/_sim/room/pin26/level", r"{home}/_sim/door/pin4/set", r"{home}/_sim/car/pin27/level",  # 8
]


def processes_in(folder: Path) -> list[int]:
    """PIDs of processes working inside `folder` (nodes, emulator) or naming it (config server, hub)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cwd.is_relative_to(folder) or str(folder) in cmdline:
                found.append(int(pid))
    return found


async def run_sim(tmp_path: Path, **opts: object) -> tuple[Sim, list[str]]:
    """Run the SHORT scenario; returns the sim and every view frame that showed room offline."""
    (tmp_path / "short.hjson").write_text(SHORT)
    sim = Sim(Options(folder=tmp_path / "sim", scenario=tmp_path / "short.hjson", **opts))  # type: ignore[arg-type]
    offline_frames: list[str] = []

    async def look() -> None:
        while True:
            await asyncio.sleep(0.3)
            if hasattr(sim, "watch"):
                frame = render_text(sim)
                if re.search(r"^\s*room\s+offline.*powered off", frame, re.M):
                    offline_frames.append(frame)

    looker = asyncio.create_task(look(), name="test-sim-look")  # cancelled below
    try:
        await sim.run(asyncio.Event())
    finally:
        looker.cancel()
    return sim, offline_frames


def check_result(sim: Sim, offline_frames: list[str]) -> None:
    failed = [f"{r.step.where} {r.step.describe()}: {r.detail}" for r in sim.results if r.state == "failed"]
    assert sim.ok, f"{failed}\n{render_text(sim)}"
    assert offline_frames, "the view never showed room offline"
    room = sim.watch.device("room")
    # up and running, pulled, back; and offline when the sim stopped it
    assert [s for _, s in room.changes][-4:] == ["online", "offline", "online", "offline"]
    assert sim.configured_at_end == 3
    assert sim.nodes["room"].power_ons == 2
    assert sim.nodes["room"].boots == 3  # its first boot, the restart that applied its config, the boot after the kill
    assert not processes_in(sim.folder), "a process of the sim outlived it"


@pytest.mark.timeout(300)
async def test_sim_on_mosquitto_traffic_kill_and_restart(mosquitto_factory: Callable[..., Mosquitto], home: str,
                                                         tmp_path: Path) -> None:
    broker = mosquitto_factory()
    sub = subprocess.Popen(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", "#", "-v"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        await asyncio.sleep(0.3)
        sim, offline_frames = await run_sim(tmp_path, broker=broker.url, home=home)
    finally:
        sub.terminate()
        out, _ = sub.communicate(10)
    check_result(sim, offline_frames)
    room_config = sim.watch.device("room").config
    seen = {line.split(" ", 1)[0] for line in out.splitlines() if line}
    missing = [p for p in PROTOCOL if not any(re.fullmatch(p.format(home=home), t) for t in seen)]
    assert not missing, f"never seen on the broker: {missing}"
    statuses = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith(f"{home}/room/status ")]
    assert statuses[-4:] == ["online", "offline", "online", "offline"]
    # the config the node came back with is the one it had before: its info says so, and the request says it held it
    infos = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith(f"{home}/room/info ")]
    assert infos[-1]["config"] == room_config
    # after the restart the lamp came back ON (restored from its retained state), its relay pulled in
    killed = out.rindex(f"{home}/room/status offline", 0, out.rindex(f"{home}/room/status offline"))
    after = out[killed:]
    assert f"{home}/room/lamp ON" in after and f"{home}/_sim/room/pin26/level 0" in after
    requests = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines()
                if line.startswith(f"{home}/config/request/room ")]
    assert requests[-1]["v"] == room_config


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sim_on_the_embedded_broker(tmp_path: Path, home: str) -> None:
    sim, offline_frames = await run_sim(tmp_path, broker_kind="embedded", home=home)
    assert sim.broker is not None and sim.broker.kind == "embedded"
    check_result(sim, offline_frames)


def test_scenario_errors_name_file_line_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.hjson"
    path.write_text('{\n  steps: [\n    { sim: "car", payload: 1 }\n    { expect: "camera.stpo" }\n'
                    '    { node: "room", do: "explode" }\n    { publish: "a/#", payload: "x", at: -1 }\n  ]\n}\n')
    with pytest.raises(ConfigError) as err:
        scenario.load(path, "home", "car")
    text = str(err.value)
    assert text.splitlines() == [
        f'{path}:3:7: steps[0].sim: expected "<id>/<part>" like "car/pin17", found \'car\'',
        f"{path}:4:7: steps[1].expect: job camera announces no event 'stpo' (events: segment)",
        f"{path}:5:21: steps[2].do: node: needs do: kill | start | restart",
        f"{path}:6:37: steps[3].at: expected seconds ≥ 0, found -1",
        f"{path}:6:7: steps[3].publish: 'a/#': no wildcards in a topic to publish on"]


def test_default_scenario_loads() -> None:
    s = scenario.load(REPO / "examples" / "scenarios" / "drive.hjson", "home", "car")
    kinds = {step.kind for step in s.steps}
    assert kinds == {"expect", "sim", "publish", "wait"}
    assert s.steps[0].condition == scenario.CONFIGURED


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """`fleet sim` as a user runs it: Ctrl-C (SIGINT) ends it with 130 and leaves no process behind."""
    (tmp_path / "wait.hjson").write_text('{ steps: [ { expect: "configured", within: 60 }, { wait: 600 } ] }')
    folder = tmp_path / "sim"
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "sim", "--no-view", "--dir", str(folder),
                             "--scenario", str(tmp_path / "wait.hjson")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "✓" in line:  # every node configured
            break
    running = processes_in(folder)
    assert len(running) >= 3 + 3, "".join(lines)  # 3 nodes, the server, the hub, the emulator
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    assert not processes_in(folder), "a process of the sim outlived it"


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_the_default_drive_with_generated_nodes_and_a_broken_device_file(tmp_path: Path, home: str) -> None:
    """What `scripts/fleet sim` runs (examples/scenarios/drive.hjson), plus 2 generated nodes, on a copy of
    examples/devices holding one broken file: that one is reported and not run, the rest pass."""
    devices = tmp_path / "devices"
    shutil.copytree(REPO / "examples" / "devices", devices)
    (devices / "broken.hjson").write_text(BROKEN)
    sim = Sim(Options(folder=tmp_path / "sim", nodes=2, devices=devices, home=home))
    await sim.run(asyncio.Event())
    failed = [f"{r.step.where} {r.step.describe()}: {r.detail}" for r in sim.results if r.state == "failed"]
    assert sim.ok, f"{failed}\n{render_text(sim)}"
    assert sorted(sim.nodes) == ["door", "node-001", "node-002", "room", "thermostat"]
    assert sim.configured_at_end == 5
    assert len(sim.problems) == 1 and sim.problems[0].startswith("broken.hjson: refused by the config server: ")
    assert "constructor_args.pn" in sim.problems[0]
    assert not processes_in(sim.folder)
