"""The templates and the examples at the top of every component file, kept from rotting: each is read by the
config server's own checker (as a device file would be) and run on a virtual node against Mosquitto."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import hjson

from config_server.declarations import Library
from config_server.devicefile import read_device
from fleet.broker import Mosquitto
from fleet.mqtt import BrokerSettings
from fleet.upy import REPO
from tests.test_components import near, node_files, running

TEMPLATES = REPO / "_templates"
EXAMPLE = re.compile(r"Example \(hjson\):\n(.*?)\n\n", re.S)
# the examples in the order a device would load them: buses before what uses them
EXAMPLE_ORDER = ["machine/i2c", "machine/onewire", "machine/ram", "machine/stats", "machine/switch",
                 "machine/relay", "machine/button", "machine/led", "machine/pwm", "machine/adc",
                 "sensors/htu21d", "sensors/bme280", "sensors/ds18b20", "sensors/dht22", "devices/buzzer",
                 "devices/thermostat"]


def broker(mosquitto: Mosquitto) -> BrokerSettings:
    return BrokerSettings(mosquitto.url, f"t{uuid.uuid4().hex[:8]}")


def test_every_component_file_has_version_wiring_and_example() -> None:
    for rel in EXAMPLE_ORDER:
        text = (REPO / "components" / f"{rel}.py").read_text()
        assert re.search(r'^__version__ = "\d+\.\d+\.\d+"$', text, re.M), rel
        assert "Wiring:" in text and EXAMPLE.search(text), rel
    listed = {str(p.relative_to(REPO / "components").with_suffix("")) for p in (REPO / "components").rglob("*.py")}
    assert listed - set(EXAMPLE_ORDER) == {"__init__", "machine/__init__", "sensors/__init__", "devices/__init__",
                                           "sensors/filters", "machine/manifest", "sensors/manifest",
                                           "devices/manifest", "manifest"}


async def test_component_examples_validate_and_run(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The examples at the top of the component files, together as one device: the config server finds no
    error in them, and a virtual node runs every one."""
    components: dict = {}
    for rel in EXAMPLE_ORDER:
        block = EXAMPLE.search((REPO / "components" / f"{rel}.py").read_text())
        assert block, rel
        components.update(hjson.loads("{\n" + block.group(1).split("# then")[0] + "\n}"))
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
    files = node_files({"_order": checked.config.order, **checked.config.components}, board)
    async with running(broker(mosquitto), tmp_path / "fs", "examples", files) as (node, obs):
        info = json.loads(await obs.wait(node.topic("info")))
        assert info["failed"] == {}
        assert set(info["components"]) == set(components)
        for name in ("outside", "climate", "water", "porch", "heating"):
            await obs.wait(node.topic(name))


async def test_local_components_template_runs(mosquitto: Mosquitto, tmp_path: Path) -> None:
    files = node_files({})
    del files["components.json"]
    files["local_components.py"] = (TEMPLATES / "local_components.py").read_text()
    async with running(broker(mosquitto), tmp_path / "fs", "local", files) as (node, obs):
        await node.vn.wait_for(r"config from local_components.py")
        info = json.loads(await obs.wait(node.topic("info")))
        assert info["failed"] == {} and len(info["components"]) == 6
        await obs.wait(node.topic("climate"), near("temperature", 18.0, 0.2))
        await obs.wait(node.topic("heater"), lambda p: p == b"ON")  # 18 °C, target 21


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


async def test_component_and_sensor_templates_run(mosquitto: Mosquitto, tmp_path: Path) -> None:
    board = {"models": [{"model": "tmp102", "module": "tmp102_model", "bus": "i2c", "address": "0x48",
                         "temperature": -5.5}]}
    files = node_files({
        "i2c": {"package": ".machine.i2c", "component": "I2C"},
        "desk": {"package": "_templates.sensor_template", "component": "TMP102", "constructor_args": {"i2c": "i2c"}},
        "meter": {"package": "_templates.component_template", "component": "PulseCounter",
                  "constructor_args": {"pin": 5, "interval": 1, "per_pulse": 0.5, "unit": "L"}}}, board)
    files["tmp102_model.py"] = TMP102_MODEL
    async with running(broker(mosquitto), tmp_path / "fs", "templates", files) as (node, obs):
        info = json.loads(await obs.wait(node.topic("info")))
        assert info["failed"] == {} and info["components"]["desk"] == "1.0.0"
        await obs.wait(node.topic("desk"), lambda p: p == b"-5.5")
        m = obs.mark()
        for _ in range(3):
            await obs.publish(node.sim("pin5/set"), "0")
            await obs.publish(node.sim("pin5/set"), "1")
        await obs.wait(node.topic("meter"), lambda p: p == b"1.5", start=m)
        await obs.publish(node.topic("meter/set"), "reset")
        await obs.wait(node.topic("meter"), lambda p: p == b"0.0", start=m)
        await obs.publish(node.sim("tmp102-0x48/set"), '{"fail": "nack"}')
        await obs.wait(node.log("error"), lambda p: b"desk: read failed: OSError: no answer at 0x48" in p, start=m)


async def test_device_template_validates_and_runs(mosquitto: Mosquitto, tmp_path: Path) -> None:
    checked = read_device(TEMPLATES / "device.hjson", Library())
    assert checked.ok, "\n".join(str(i) for i in checked.issues)
    assert checked.config is not None and checked.config.settings == {"interval": 30}
    files = node_files({"_order": checked.config.order, **checked.config.components})
    async with running(broker(mosquitto), tmp_path / "fs", "device", files) as (node, obs):
        info = json.loads(await obs.wait(node.topic("info")))
        assert info["failed"] == {} and set(info["components"]) == set(checked.config.order)
        await obs.wait(node.topic("climate"), near("temperature", 22.5, 0.2))


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
