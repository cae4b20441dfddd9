"""The config server's validation: component declarations read with `ast`, and every device-file error
reported exactly as FILE:LINE:COL: path.to.key: message. Component sources under tests/data/ are inputs
for the declaration reader (never run); the examples are checked against the real component library."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from config_server.declarations import MISSING, DeclarationError, Library
from config_server.devicefile import read_device
from config_server.pieces import Reassembler, assemble, pieces, signature

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"


@pytest.fixture
def lib() -> Library:
    return Library(DATA)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def issues(path: Path, lib: Library, cwd: Path) -> list[str]:
    checked = read_device(path.relative_to(cwd), lib)
    return [str(i) for i in checked.issues]


# Declarations


def test_declaration_of_a_component_subclass(lib: Library) -> None:
    relay = lib.declaration(".machine.relay", "Relay")
    # `name` is the loader's to give; **kwargs brings the base class's arguments.
    assert [(a.name, a.type, a.default) for a in relay.args] == [
        ("pin", "pin", MISSING), ("active_low", "bool", False), ("restore", "bool", True),
        ("friendly_name", "str", None), ("discover", "bool", True)]
    assert relay.named and not relay.open and relay.version == "1.0.0"
    assert {"toggle", "publish"} <= set(relay.methods or ())


def test_declaration_types_from_annotations_comments_and_defaults(lib: Library) -> None:
    htu = lib.declaration(".sensors.htu21d", "HTU21D")  # base reached through `from pysmartnode import component`
    types = {a.name: (a.type, a.nullable) for a in htu.args}
    assert types["i2c"] == ("component", False)  # `# type: I2C`: a reference
    assert types["precision_temp"] == ("number", False)  # from the default 2
    assert types["offset_temp"] == ("float", False)  # annotation
    assert types["address"] == ("int", False)  # `# type: int` is stricter than the default
    assert types["interval"] == ("float", True)  # `# type: float | None`, from the Sensor base
    assert types["precision"] == ("any", False)  # `int | dict`: a union is not checked further
    assert htu.arg("i2c") is not None and htu.arg("i2c").required


def test_declaration_of_functions_foreign_bases_and_broken_files(lib: Library) -> None:
    blink = lib.declaration(".machine.blink", "blink")
    assert blink.kind == "function" and blink.varargs and [a.name for a in blink.args] == ["pin", "period"]
    assert lib.declaration(".machine.foreign", "Foreign").open  # its base is outside the library
    with pytest.raises(DeclarationError, match=r"broken\.py:2:\d+: cannot read the component"):
        lib.declaration(".sensors.broken", "Broken")
    with pytest.raises(DeclarationError, match="defines no class or function 'Rely'"):
        lib.declaration(".machine.relay", "Rely")


def test_real_component_library_declares_every_component() -> None:
    real = Library(REPO)
    assert not [p for p in real.packages() if p.endswith(".manifest")]  # freeze manifests are not components
    for package in real.packages():
        for name in real.names(package):
            real.declaration(package, name)  # raises DeclarationError on a file the reader cannot follow


# Device files

KITCHEN = """
    # The kitchen node
    name: Kitchen
    platform: esp32
    colour: blue
    settings: {
      interval: 30
      debgu: true
    }
    components: {
      _order: ["i2c", "htu", "relay", "ghost", "thermo", "relay2"]
      i2c: {
        package: .machine.i2c
        component: I2C
        constructor_args: {pin_scl: 22, pin_sda: 21}
      }
      htu: {
        package: .sensors.htu21d
        component: HTU21D
        constructor_args: {
          i2c: "i2c"
          precison_temp: 2
          address: 64.5
        }
      }
      relay: {
        package: .machine.relay
        component: Relay
        constructor_args: {
          pin: 21
          active_low: yes  # inverted
        }
        init_function: toggel
      }
      thermo: {
        package: .devices.thermostat
        component: Thermostat
        constructor_args: {sensor: "htu", switch: "relay2", target: "warm"}
      }
      relay2: {
        package: .machine.rely
        component: Relay
      }
      stray: {
        package: .machine.relay
        component: Rellay
        constructor_args: {}
      }
    }
"""


def test_every_error_reported_with_file_line_column(tmp_path: Path, lib: Library, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "devices/kitchen.hjson", KITCHEN)
    assert issues(path, lib, tmp_path) == [
        "devices/kitchen.hjson:4:1: colour: unknown key",
        "devices/kitchen.hjson:7:3: settings.debgu: unknown setting, the node would ignore it (did you mean debug?)",
        "devices/kitchen.hjson:10:35: _order[3]: no component named 'ghost'",
        "devices/kitchen.hjson:43:3: stray: not in _order, so it would never be loaded",
        "devices/kitchen.hjson:21:7: htu.constructor_args.precison_temp: unknown argument"
        " (did you mean precision_temp?)",
        "devices/kitchen.hjson:22:7: htu.constructor_args.address: expected int, got float 64.5",
        "devices/kitchen.hjson:29:7: relay.constructor_args.pin: pin 21 is also used by i2c.constructor_args.pin_sda"
        " (devices/kitchen.hjson:14:37)",
        "devices/kitchen.hjson:30:7: relay.constructor_args.active_low: expected bool, got str \"yes  # inverted\""
        " (a value without quotes runs to the end of the line, comment included: quote it)",
        "devices/kitchen.hjson:32:5: relay.init_function: Relay has no method 'toggel' (did you mean toggle?)",
        "devices/kitchen.hjson:37:39: thermo.constructor_args.switch: refers to 'relay2', which is loaded later"
        " (see _order)",
        "devices/kitchen.hjson:37:57: thermo.constructor_args.target: expected float, got str \"warm\"",
        "devices/kitchen.hjson:40:5: relay2.package: no component module components.machine.rely"
        " (did you mean .machine.relay?)",
        "devices/kitchen.hjson:45:5: stray.component: components.machine.relay has no 'Rellay'"
        " (did you mean Relay?)",
    ]


def test_syntax_error_names_file_line_and_column(tmp_path: Path, lib: Library, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "devices/hall.hjson", """
        components: {
          _order: ["a"]
          a: {package: .machine.relay
        }
    """)
    [issue] = issues(path, lib, tmp_path)
    assert issue.startswith("devices/hall.hjson:")
    assert "missing '}'" in issue


def test_missing_required_and_reference_to_nothing(tmp_path: Path, lib: Library, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "devices/hall.hjson", """
        components: {
          _order: ["sensor", "relay", "relay"]
          sensor: {package: ".sensors.htu21d", component: "HTU21D", constructor_args: {i2c: "i2x"}}
          relay: {package: ".machine.relay", component: "Relay"}
        }
    """)
    assert issues(path, lib, tmp_path) == [
        "devices/hall.hjson:2:31: _order[2]: relay is listed twice (first at devices/hall.hjson:2:22)",
        "devices/hall.hjson:3:80: sensor.constructor_args.i2c: no component named 'i2x'",
        "devices/hall.hjson:4:3: relay: missing required argument pin",
    ]


def test_includes_merge_and_report_in_their_own_file(tmp_path: Path, lib: Library, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "devices/include/common.hjson", """
        settings: {interval: 60}
        components: {
          _order: ["i2c"]
          i2c: {
            package: .machine.i2c
            component: I2C
            constructor_args: {pin_scl: 5, pin_sda: "4", frequency: 100000}
          }
        }
    """)
    write(tmp_path, "devices/include/secrets.example.hjson", """
        wifi: {ssid: "home", password: "changeme"}
    """)
    path = write(tmp_path, "devices/porch.hjson", """
        include: ["include/common.hjson", "include/secrets.hjson"]
        settings: {interval: 30}
        components: {
          _order: ["htu"]
          htu: {package: ".sensors.htu21d", component: "HTU21D", constructor_args: {i2c: "i2c"}}
          i2c: {constructor_args: {pin_sda: 4}}
        }
    """)
    checked = read_device(path.relative_to(tmp_path), lib)
    assert [str(i) for i in checked.issues] == [
        "devices/include/common.hjson:7:50: i2c.constructor_args.frequency: unknown argument (did you mean freq?)"]
    assert [str(w) for w in checked.warnings] == [
        "devices/porch.hjson:1:35: include[1]: include/secrets.hjson not found, using secrets.example.hjson:"
        " copy it to include/secrets.hjson and put your own values in"]
    # Drop the bad argument: the merge is what the node gets (the device's own values win).
    common = tmp_path / "devices/include/common.hjson"
    common.write_text(common.read_text().replace(", frequency: 100000", ""))
    config = read_device(path.relative_to(tmp_path), lib).config
    assert config is not None
    assert config.settings == {"interval": 30}
    assert config.order == ["i2c", "htu"]
    assert config.components["i2c"]["constructor_args"] == {"pin_scl": 5, "pin_sda": 4}
    assert config.wifi == {"ssid": "home", "password": "changeme"}


def test_include_missing_or_looping(tmp_path: Path, lib: Library, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "devices/include/a.hjson", 'include: "b.hjson"\n')
    write(tmp_path, "devices/include/b.hjson", 'include: ["a.hjson"]\n')
    path = write(tmp_path, "devices/loft.hjson", """
        include: ["include/a.hjson", "include/gone.hjson"]
    """)
    assert issues(path, lib, tmp_path) == [
        "devices/include/b.hjson:1:11: include[0]: include loops: a.hjson -> b.hjson -> a.hjson",
        "devices/loft.hjson:1:30: include[1]: include 'include/gone.hjson' not found (devices/include/gone.hjson)",
    ]


def test_bad_file_name_and_non_object(tmp_path: Path, lib: Library, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = write(tmp_path, "devices/Kitchen.hjson", "components: {}\n")
    assert issues(bad, lib, tmp_path) == [
        "devices/Kitchen.hjson:1:1: file name: device id 'Kitchen' must match [a-z0-9_-]{1,32}"]
    listing = write(tmp_path, "devices/list.hjson", "[1, 2]\n")
    assert issues(listing, lib, tmp_path) == [
        "devices/list.hjson:1:1: expected an object of keys (name, platform, components, …)"]


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    write(tmp_path, "devices/kitchen.hjson", KITCHEN)
    fleet = [sys.executable, "-m", "fleet.cli", "server", "validate", "--library", str(DATA)]
    bad = subprocess.run([*fleet, "--devices", "devices"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "devices/kitchen.hjson:21:7: htu.constructor_args.precison_temp: unknown argument" in bad.stdout
    assert "1 device files: 0 valid, 1 with 13 errors" in bad.stderr
    good = subprocess.run([sys.executable, "-m", "fleet.cli", "server", "validate", "--devices",
                           str(REPO / "examples/devices")], capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "3 device files: 3 valid" in good.stderr


# The wire format


def test_pieces_split_sign_and_reassemble(tmp_path: Path) -> None:
    config = read_device(REPO / "examples/devices/thermostat.hjson", Library(REPO)).config
    assert config is not None
    assembled = assemble(config)
    v = f"3-{assembled.hash8}"
    sig = signature(b"k" * 32, "thermostat", v, assembled)
    payloads = pieces(assembled, v, 200, sig)
    assert all(len(p) <= 200 for p in payloads)
    assert len(payloads) > len(assembled.bodies)  # some bodies were split
    node = Reassembler()
    got = [node.feed(p) for p in payloads]
    assert got[:-1] == [None] * (len(payloads) - 1)
    whole = got[-1]
    assert whole is not None and whole.v == v and whole.sig == sig
    assert whole.order == config.order and whole.components == config.components
    assert whole.digest == assembled.digest


def test_registry_rechecks_devices_when_the_library_changes(tmp_path: Path) -> None:
    from config_server.registry import Registry

    root = tmp_path / "lib"
    shutil.copytree(DATA, root)
    write(tmp_path, "devices/attic.hjson", """
        components: {
          _order: ["gizmo"]
          gizmo: {package: ".machine.gizmo", component: "Gizmo", constructor_args: {pin: 4}}
        }
    """)
    registry = Registry(tmp_path / "devices", Library(root))
    [change] = registry.scan()
    assert change.kind == "invalid" and "no component module components.machine.gizmo" in str(change.checked.issues[0])
    assert registry.scan() == []  # nothing changed, nothing re-read
    (root / "components/machine/gizmo.py").write_text("class Gizmo:\n    def __init__(self, pin):\n        pass\n")
    [change] = registry.scan()
    assert change.kind == "new" and change.served is not None and change.served.counter == 1
