"""The templates and the examples at the top of every component file, kept from rotting: each is read by the
config server's own checker (as a device file would be) and run on a virtual node against Mosquitto."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import hjson
import pytest

from config_server.declarations import Library
from config_server.devicefile import read_device
from fleet.broker import Mosquitto
from fleet.upy import REPO
from test_components import BOARD, Recorder, VNode, near

TEMPLATES = REPO / "_templates"
EXAMPLE = re.compile(r"Example \(hjson\):\n(.*?)\n\n", re.S)
# the examples in the order a device would load them: buses before what uses them
EXAMPLE_ORDER = ["machine/i2c", "machine/onewire", "machine/ram", "machine/stats", "machine/switch",
                 "machine/relay", "machine/button", "machine/led", "machine/pwm", "machine/adc",
                 "sensors/htu21d", "sensors/bme280", "sensors/ds18b20", "sensors/dht22", "devices/buzzer",
                 "devices/thermostat"]


def boot(mosquitto: Mosquitto, fs: Path, components: dict | None, board: dict | None = BOARD,
         ) -> tuple[VNode, Recorder]:
    home = f"t{uuid.uuid4().hex[:8]}"
    node = VNode(fs, mosquitto, home, "tpl", components or {}, board)
    if components is None:
        (fs / "components.json").unlink()
    rec = Recorder(mosquitto.port, [f"{home}/#"])
    node.start()
    return node, rec


@pytest.fixture
def nodes():
    started: list[tuple[VNode, Recorder]] = []
    yield started
    for node, rec in started:
        node.stop()
        rec.close()


def test_every_component_file_has_version_wiring_and_example() -> None:
    for rel in EXAMPLE_ORDER:
        text = (REPO / "components" / f"{rel}.py").read_text()
        assert re.search(r'^__version__ = "\d+\.\d+\.\d+"$', text, re.M), rel
        assert "Wiring:" in text and EXAMPLE.search(text), rel
    listed = {str(p.relative_to(REPO / "components").with_suffix("")) for p in (REPO / "components").rglob("*.py")}
    assert listed - set(EXAMPLE_ORDER) == {"__init__", "machine/__init__", "sensors/__init__", "devices/__init__",
                                           "sensors/filters", "machine/manifest", "sensors/manifest",
                                           "devices/manifest", "manifest"}


def test_component_examples_validate_and_run(mosquitto: Mosquitto, tmp_path: Path, nodes: list) -> None:
    """The examples at the top of the component files, together as one device: the config server finds no
    error in them, and a virtual node runs every one."""
    components: dict = {}
    for rel in EXAMPLE_ORDER:
        block = EXAMPLE.search((REPO / "components" / f"{rel}.py").read_text())
        assert block, rel
        part = hjson.loads("{\n" + block.group(1).split("# then")[0] + "\n}")
        components.update(part)
    device = tmp_path / "devices" / "examples.hjson"
    device.parent.mkdir()
    device.write_text(hjson.dumps({"name": "Examples", "platform": "unix",
                                   "components": {"_order": list(components), **components}}))
    checked = read_device(device, Library())
    assert checked.ok, "\n".join(str(i) for i in checked.issues)
    assert checked.config is not None
    board = {"models": [
        {"model": "htu21d", "bus": "i2c", "address": "0x40"},
        {"model": "bme280", "bus": "i2c", "address": "0x76"},
        {"model": "ds18b20", "bus": "onewire", "pin": 13, "rom": "28ff4a1c33160456"},
        {"model": "dht22", "bus": "dht", "pin": 17}]}
    node, rec = boot(mosquitto, tmp_path / "fs", {"_order": checked.config.order, **checked.config.components},
                     board)
    nodes.append((node, rec))
    info = json.loads(rec.wait(node.topic("info")))
    assert info["failed"] == {}
    assert set(info["components"]) == set(components)
    for name in ("outside", "climate", "water", "porch", "heating"):
        rec.wait(node.topic(name))


def test_local_components_template_runs(mosquitto: Mosquitto, tmp_path: Path, nodes: list) -> None:
    fs = tmp_path / "fs"
    fs.mkdir()
    shutil.copy(TEMPLATES / "local_components.py", fs / "local_components.py")
    node, rec = boot(mosquitto, fs, None)
    nodes.append((node, rec))
    node.proc.wait_for(r"config from local_components.py")  # type: ignore[union-attr]
    info = json.loads(rec.wait(node.topic("info")))
    assert info["failed"] == {} and len(info["components"]) == 6
    rec.wait(node.topic("climate"), near("temperature", 18.0, 0.2))
    rec.wait(node.topic("heater"), lambda p: p == b"ON")  # 18 °C, target 21


TMP102_MODEL = '''
from pysmartnode.virtual import Model as _Model


class Model(_Model):
    """A TMP102 for the sensor template's test: register 0x00, 12-bit two's complement, MSB first."""
    defaults = {"temperature": 21.0}

    def read_mem(self, reg, n):
        self.nack()
        raw = int(self.inputs["temperature"] / 0.0625) & 0xFFF
        return bytes((raw >> 4, raw << 4 & 0xF0))[:n]
'''


def test_component_and_sensor_templates_run(mosquitto: Mosquitto, tmp_path: Path, nodes: list) -> None:
    fs = tmp_path / "fs"
    fs.mkdir()
    (fs / "tmp102_model.py").write_text(TMP102_MODEL)
    board = {"models": [{"model": "tmp102", "module": "tmp102_model", "bus": "i2c", "address": "0x48",
                         "temperature": -5.5}]}
    node, rec = boot(mosquitto, fs, {
        "i2c": {"package": ".machine.i2c", "component": "I2C"},
        "desk": {"package": "_templates.sensor_template", "component": "TMP102", "constructor_args": {"i2c": "i2c"}},
        "meter": {"package": "_templates.component_template", "component": "PulseCounter",
                  "constructor_args": {"pin": 5, "interval": 1, "per_pulse": 0.5, "unit": "L"}}}, board)
    nodes.append((node, rec))
    info = json.loads(rec.wait(node.topic("info")))
    assert info["failed"] == {} and info["components"]["desk"] == "1.0.0"
    rec.wait(node.topic("desk"), lambda p: p == b"-5.5")
    m = rec.mark()
    for _ in range(3):
        rec.publish(node.sim("pin5/set"), "0")
        rec.publish(node.sim("pin5/set"), "1")
    rec.wait(node.topic("meter"), lambda p: p == b"1.5", start=m)
    rec.publish(node.topic("meter/set"), "reset")
    rec.wait(node.topic("meter"), lambda p: p == b"0.0", start=m)
    rec.publish(node.sim("tmp102-0x48/set"), '{"fail": "nack"}')
    rec.wait(node.log("error"), lambda p: b"desk: read failed: OSError: no answer at 0x48" in p, start=m)


def test_device_template_validates_and_runs(mosquitto: Mosquitto, tmp_path: Path, nodes: list) -> None:
    checked = read_device(TEMPLATES / "device.hjson", Library())
    assert checked.ok, "\n".join(str(i) for i in checked.issues)
    assert checked.config is not None and checked.config.settings == {"interval": 30}
    node, rec = boot(mosquitto, tmp_path / "fs", {"_order": checked.config.order, **checked.config.components})
    nodes.append((node, rec))
    info = json.loads(rec.wait(node.topic("info")))
    assert info["failed"] == {} and set(info["components"]) == set(checked.config.order)
    rec.wait(node.topic("climate"), near("temperature", 22.5, 0.2))


def frozen(manifest: Path, seen: set[Path] | None = None) -> set[Path]:
    """The files a micropython-lib style manifest freezes, following its include()s."""
    files: set[Path] = set()
    seen = seen if seen is not None else set()
    if manifest in seen:
        return files
    seen.add(manifest)
    here = manifest.parent

    def package(name: str, base_path: str = ".", **kw: tuple[str, ...]) -> None:
        files.update((here / base_path / name / f).resolve() for f in kw.get("files", ()))

    def include(path: str) -> None:
        files.update(frozen((here / path).resolve(), seen))

    exec(manifest.read_text(), {"metadata": lambda **_: None, "package": package, "include": include})
    return files


def test_manifests_freeze_every_module() -> None:
    top = REPO / "components"
    modules = {p.resolve() for p in top.rglob("*.py") if p.name != "manifest.py"}
    assert frozen(top / "manifest.py") == modules
    for kind in ("machine", "sensors", "devices"):
        wanted = {p.resolve() for p in (top / kind).glob("*.py") if p.name != "manifest.py"}
        assert wanted <= frozen(top / kind / "manifest.py"), kind  # each kind freezes alone too
