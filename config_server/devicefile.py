"""One device file: read with its includes, checked against the component library, made into a DeviceConfig.

Every problem is reported (never only the first) as a ConfigIssue placed in the file that holds the
offending key: `devices/kitchen.hjson:12:5: components.htu.constructor_args.precison_temp: unknown argument
(did you mean precision_temp?)`. The format is docs/CONFIG_SERVER.md's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config_server.declarations import Arg, Declaration, DeclarationError, Library, is_pin_name
from fleet import hjsonpos, topics
from fleet.errors import ConfigError, ConfigIssue, Position, did_you_mean
from fleet.hjsonpos import Document, KeyPath

DEVICE_KEYS = ("name", "platform", "include", "settings", "components", "wifi", "mqtt")
COMPONENT_KEYS = ("package", "component", "constructor_args", "init_function", "init_args",
                  "call_function_regularly", "call_interval")
PLATFORMS = ("esp32", "esp8266", "unix")
# What a node takes from the `_settings` piece (docs/NODE.md, "Settings"), in lower or upper case.
SETTINGS = {"interval": "number", "info_interval": "number", "log_buffer": "int", "debug": "bool",
            "watchdog": "number", "device_name": "str", "device_model": "str"}
# Used by `fleet firmware bundle` to write the node's config.py; never sent over MQTT.
SECTION_KEYS = {"wifi": ("ssid", "password"), "mqtt": ("broker", "user", "password", "home")}
_COMMENTED = re.compile(r"\s(#|//)")
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict", type(None): "null"}


@dataclass
class DeviceConfig:
    """A valid device: what is served (settings, order, components) and what is not (wifi, mqtt)."""

    id: str
    name: str
    platform: str | None
    settings: dict[str, Any]
    order: list[str]
    components: dict[str, dict[str, Any]]
    wifi: dict[str, Any] = field(default_factory=dict)
    mqtt: dict[str, Any] = field(default_factory=dict)


@dataclass
class Checked:
    """The outcome of reading one device file: its config when valid, every issue, every file read."""

    device_id: str
    path: Path
    config: DeviceConfig | None
    issues: list[ConfigIssue]
    warnings: list[ConfigIssue]
    files: list[Path]

    @property
    def ok(self) -> bool:
        return not self.issues


DocCache = dict[Path, tuple[int, int, Document]]


@dataclass
class _Merged:
    """A device file and its includes merged (the including file wins), remembering who set what."""

    data: dict[str, Any] = field(default_factory=dict)
    owners: dict[KeyPath, Document] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    order_at: list[tuple[Document, KeyPath]] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def issue(self, path: KeyPath, message: str) -> None:
        self.issues.append(_issue(self.where(path), path, message))

    def where(self, path: KeyPath) -> Document:
        for n in range(len(path), -1, -1):
            doc = self.owners.get(path[:n])
            if doc is not None:
                return doc
        raise KeyError(path)  # the root always has an owner once a file was read


def show_path(path: KeyPath) -> str:
    """A key path as messages print it: components are named on their own (`htu.constructor_args.pin`)."""
    return hjsonpos.format_path(path[1:] if path[:1] == ("components",) and len(path) > 1 else path)


def _issue(doc: Document, path: KeyPath, message: str) -> ConfigIssue:
    return ConfigIssue(doc.pos(path), show_path(path), message)


def device_id_of(path: Path) -> str:
    return path.name.removesuffix(".hjson")


def is_device_file(path: Path) -> bool:
    """`DIR/<id>.hjson`; `secrets.example.hjson` and `_draft.hjson` are not devices."""
    name = path.name
    return name.endswith(".hjson") and name.count(".") == 1 and not name.startswith(("_", "."))


def read_device(path: Path, library: Library, cache: DocCache | None = None) -> Checked:
    """Read `path` and its includes and check everything; never raises for a bad file."""
    m = _Merged()
    device_id = device_id_of(path)
    _read(m, path, (), None, cache if cache is not None else {})
    config = None
    if m.owners:
        if (why := topics.check_device_id(device_id)) is not None:
            m.issues.append(ConfigIssue(Position(str(path), 1, 1), "", f"file name: {why}"))
        config = _Checker(m, library, device_id).run()
    return Checked(device_id, path, None if m.issues else config, m.issues, m.warnings, m.files)


def _read(m: _Merged, path: Path, chain: tuple[str, ...], via: tuple[Document, KeyPath] | None,
          cache: DocCache) -> None:
    real = os.path.realpath(path)
    if real in chain:
        assert via is not None  # the first file cannot loop on itself before including anything
        loop = " -> ".join(os.path.basename(p) for p in (*chain[chain.index(real):], real))
        m.issues.append(_issue(via[0], via[1], f"include loops: {loop}"))
        return
    m.files.append(path)
    try:
        doc = _load(path, cache)
    except ConfigError as e:
        m.issues.extend(e.issues)
        return
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if via is not None:
            m.issues.append(_issue(via[0], via[1], f"include {path}: {reason}"))
        else:
            m.issues.append(ConfigIssue(Position(str(path), 1, 1), "", f"cannot read: {reason}"))
        return
    m.issues.extend(doc.duplicates)
    if not isinstance(doc.data, dict):
        m.issues.append(_issue(doc, (), "expected an object of keys (name, platform, components, …)"))
        return
    include = doc.data.get("include", [])
    entries: list[tuple[Any, KeyPath]]
    if isinstance(include, str):
        entries = [(include, ("include",))]
    elif isinstance(include, list):
        entries = [(name, ("include", i)) for i, name in enumerate(include)]
    else:
        m.issues.append(_issue(doc, ("include",), "expected a file name or a list of them"))
        entries = []
    for name, at in entries:
        if not isinstance(name, str) or not name:
            m.issues.append(_issue(doc, at, "expected a file name"))
            continue
        target = Path(os.path.normpath(path.parent / name))
        if not target.exists():
            # `secrets.hjson` is the user's own; until they make it, the example stands in, with a warning.
            example = target.with_name(f"{target.stem}.example{target.suffix}")
            m.files.append(target)  # watched, so that creating it reloads the device
            if not example.exists():
                m.issues.append(_issue(doc, at, f"include {name!r} not found ({target})"))
                continue
            m.warnings.append(_issue(doc, at, f"{name} not found, using {example.name}: copy it to {name} "
                                            "and put your own values in"))
            target = example
        _read(m, target, (*chain, real), (doc, at), cache)
    m.owners.setdefault((), doc)
    _merge(m, doc.data, m.data, doc, ())


def _load(path: Path, cache: DocCache) -> Document:
    st = path.stat()
    hit = cache.get(path)
    if hit is not None and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
        return hit[2]
    doc = hjsonpos.load(path)
    cache[path] = (st.st_mtime_ns, st.st_size, doc)
    return doc


def _merge(m: _Merged, src: dict[str, Any], dst: dict[str, Any], doc: Document, path: KeyPath) -> None:
    """Merge `src` into `dst`. Dicts are rebuilt, never shared with a (cached) document."""
    for key, value in src.items():
        here = (*path, key)
        if not path and key == "include":
            continue
        if path == ("components",) and key == "_order":
            _merge_order(m, value, doc, here)
            continue
        if isinstance(value, dict):
            if not isinstance(dst.get(key), dict):
                dst[key] = {}
                m.owners[here] = doc
            _merge(m, value, dst[key], doc, here)
        else:
            dst[key] = value
            m.owners[here] = doc


def _merge_order(m: _Merged, value: Any, doc: Document, path: KeyPath) -> None:
    """`_order`s add up: the included files' first, in include order, then the including file's."""
    if not isinstance(value, list):
        m.issues.append(_issue(doc, path, "expected a list of component names"))
        return
    for i, name in enumerate(value):
        if not isinstance(name, str):
            m.issues.append(_issue(doc, (*path, i), "expected a component name"))
        elif name in m.order:
            first_doc, first_at = m.order_at[m.order.index(name)]
            if first_doc is doc:
                m.issues.append(_issue(doc, (*path, i), f"{name} is listed twice (first at {doc.pos(first_at)})"))
        else:
            m.order.append(name)
            m.order_at.append((doc, (*path, i)))


class _Checker:
    """Every check on a merged device; `run` returns the DeviceConfig (used only when no issue was found)."""

    def __init__(self, m: _Merged, library: Library, device_id: str) -> None:
        self.m = m
        self.lib = library
        self.device_id = device_id
        self.pins: dict[Any, KeyPath] = {}

    def run(self) -> DeviceConfig:
        m, d = self.m, self.m.data
        for key in d:
            if key not in DEVICE_KEYS:
                m.issue((key,), f"unknown key{did_you_mean(key, DEVICE_KEYS)}")
        name = d.get("name", self.device_id)
        if not isinstance(name, str):
            m.issue(("name",), f"expected text, got {_describe(name)}")
        platform = d.get("platform")
        if platform is not None and platform not in PLATFORMS:
            m.issue(("platform",), f"expected one of {', '.join(PLATFORMS)}, got {_describe(platform)}"
                                   f"{did_you_mean(str(platform), PLATFORMS)}")
        settings = self.section("settings")
        for key, value in settings.items():
            kind = SETTINGS.get(key.lower())
            if kind is None:
                m.issue(("settings", key), f"unknown setting, the node would ignore it{did_you_mean(key, SETTINGS)}")
            elif not _is(value, kind):
                m.issue(("settings", key), f"expected {kind}, got {_describe(value)}")
        wifi, mqtt = self.section("wifi"), self.section("mqtt")
        for section, values in (("wifi", wifi), ("mqtt", mqtt)):
            for key, value in values.items():
                if key not in SECTION_KEYS[section]:
                    m.issue((section, key), f"unknown key{did_you_mean(key, SECTION_KEYS[section])}")
                elif not isinstance(value, str):
                    m.issue((section, key), f"expected text, got {_describe(value)}")
        components = self.section("components")
        self.check_order(components)
        loaded: list[str] = []
        for cname in m.order:
            if isinstance(components.get(cname), dict):
                self.check_component(cname, components[cname], components, loaded)
            loaded.append(cname)
        for cname, body in components.items():  # not in _order (an error already): checked all the same
            if cname != "_order" and cname not in m.order and isinstance(body, dict):
                self.check_component(cname, body, components, loaded)
        served = {k: v for k, v in components.items() if k in m.order}
        return DeviceConfig(self.device_id, name if isinstance(name, str) else self.device_id,
                            platform, settings, list(m.order), served, wifi, mqtt)

    def section(self, key: str) -> dict[str, Any]:
        value = self.m.data.get(key, {})
        if isinstance(value, dict):
            return value
        self.m.issue((key,), f"expected an object, got {_describe(value)}")
        return {}

    def check_order(self, components: dict[str, Any]) -> None:
        m = self.m
        names = [k for k in components if k != "_order"]
        for name, (doc, at) in zip(m.order, m.order_at, strict=True):
            if name not in components:
                m.issues.append(_issue(doc, at, f"no component named {name!r}{did_you_mean(name, names)}"))
        for name in names:
            path = ("components", name)
            if not topics.DEVICE_ID.fullmatch(name):
                m.issue(path, "a component name must match [a-z0-9_-]{1,32}")
            elif name in topics.RESERVED_COMPONENTS:
                m.issue(path, f"{name!r} is reserved (set, status, info, cmd, config)")
            if not isinstance(components[name], dict):
                m.issue(path, f"expected an object (package, component, constructor_args, …), "
                              f"got {_describe(components[name])}")
            elif name not in m.order:
                m.issue(path, "not in _order, so it would never be loaded")

    def check_component(self, name: str, body: dict[str, Any], components: dict[str, Any],
                        loaded: list[str]) -> None:
        m = self.m
        base: KeyPath = ("components", name)
        for key in body:
            if key not in COMPONENT_KEYS:
                m.issue((*base, key), f"unknown key{did_you_mean(key, COMPONENT_KEYS)}")
        decl = self.declaration(base, body)
        args = body.get("constructor_args", {})
        at: KeyPath = (*base, "constructor_args")
        if isinstance(args, dict):
            for key, value in args.items():
                arg = decl.arg(key) if decl else None
                if decl is not None and arg is None and not decl.open:
                    m.issue((*at, key), f"unknown argument{did_you_mean(key, [a.name for a in decl.args])}")
                self.check_value((*at, key), key, arg, value, components, loaded)
            given = set(args)
        elif isinstance(args, list):
            if decl is not None and len(args) > len(decl.args) and not decl.varargs:
                m.issue(at, f"{decl.name} takes at most {len(decl.args)} arguments, got {len(args)}")
            for i, value in enumerate(args):
                arg = decl.args[i] if decl and i < len(decl.args) else None
                self.check_value((*at, i), arg.name if arg else "", arg, value, components, loaded)
            given = {a.name for a in decl.args[: len(args)]} if decl else set()
        else:
            m.issue(at, f"expected an object (or a list) of arguments, got {_describe(args)}")
            given = None
        if decl is not None and given is not None:
            missing = [a.name for a in decl.args if a.required and a.name not in given]
            if missing:
                m.issue(at if "constructor_args" in body else base,
                        f"missing required argument{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        for key in ("init_function", "call_function_regularly"):
            if key in body:
                self.check_method((*base, key), body[key], decl)
        if not isinstance(body.get("init_args", []), list):
            m.issue((*base, "init_args"), f"expected a list, got {_describe(body['init_args'])}")
        interval = body.get("call_interval", 1)
        if not (_is(interval, "number") and interval > 0):
            m.issue((*base, "call_interval"), f"expected a number of seconds > 0, got {_describe(interval)}")

    def declaration(self, base: KeyPath, body: dict[str, Any]) -> Declaration | None:
        m, lib = self.m, self.lib
        package, cls = body.get("package"), body.get("component")
        for key, value in (("package", package), ("component", cls)):
            if value is None:
                m.issue(base, f"missing {key!r}")
            elif not isinstance(value, str) or not value:
                m.issue((*base, key), f"expected text, got {_describe(value)}")
        if not isinstance(package, str) or not package:
            return None
        module = lib.module_name(package)
        if lib.module_file(module) is None:
            m.issue((*base, "package"), f"no component module {module}{did_you_mean(package, lib.packages())}")
            return None
        if not isinstance(cls, str) or not cls:
            return None
        try:
            return lib.declaration(package, cls)
        except DeclarationError as e:
            try:
                names = lib.names(package)
            except DeclarationError:
                names = None
            if names is not None and cls not in names:
                m.issue((*base, "component"), f"{module} has no {cls!r}{did_you_mean(cls, names)}")
            else:
                m.issue((*base, "package"), str(e))
            return None

    def check_value(self, path: KeyPath, key: str, arg: Arg | None, value: Any, components: dict[str, Any],
                    loaded: list[str]) -> None:
        issues = len(self.m.issues)
        self._check_value(path, key, arg, value, components, loaded)
        if len(self.m.issues) > issues and isinstance(value, str) and _COMMENTED.search(value):
            last = self.m.issues[-1]
            self.m.issues[-1] = ConfigIssue(last.pos, last.path, last.message + " (a value without quotes runs "
                                            "to the end of the line, comment included: quote it)")

    def _check_value(self, path: KeyPath, key: str, arg: Arg | None, value: Any, components: dict[str, Any],
                     loaded: list[str]) -> None:
        m = self.m
        kind = arg.type if arg else "any"
        if isinstance(value, str) and value in components:
            # The node replaces a string naming an already loaded component by that component.
            if value not in loaded:
                where = "itself" if value == path[1] else f"{value!r}, which is loaded later (see _order)"
                m.issue(path, f"refers to {where}")
            elif kind not in ("any", "component"):
                m.issue(path, f"{value!r} names a component, but {key} takes {kind}")
            return
        if kind == "component":
            if not isinstance(value, str):
                if value is not None or not (arg and arg.nullable):
                    m.issue(path, f"expected the name of a component loaded earlier, got {_describe(value)}")
            else:
                names = [c for c in components if c != "_order"]
                m.issue(path, f"no component named {value!r}{did_you_mean(value, names)}")
            return
        if value is None:
            if arg is not None and not arg.nullable and kind != "any":
                m.issue(path, f"expected {kind}, got null")
            return
        if not _is(value, kind):
            m.issue(path, f"expected {kind}, got {_describe(value)}")
            return
        if (arg.type == "pin" if arg else is_pin_name(key)) and isinstance(value, int | str):
            pin = value
            if pin in self.pins:
                first = self.pins[pin]
                m.issue(path, f"pin {pin} is also used by {show_path(first)} ({m.where(first).pos(first)})")
            else:
                self.pins[pin] = path

    def check_method(self, path: KeyPath, value: Any, decl: Declaration | None) -> None:
        if not isinstance(value, str):
            self.m.issue(path, f"expected a method name, got {_describe(value)}")
        elif decl is not None and decl.kind == "class" and decl.methods is not None and value not in decl.methods:
            methods = [n for n in decl.methods if not n.startswith("_")]
            self.m.issue(path, f"{decl.name} has no method {value!r}{did_you_mean(value, methods)}")


def _is(value: Any, kind: str) -> bool:
    if kind in ("any", "component"):
        return True
    if isinstance(value, bool):
        return kind == "bool"
    if kind == "number" or kind == "float":
        return isinstance(value, int | float)
    if kind == "pin":
        return isinstance(value, int | str)
    return _TYPE_NAMES.get(type(value)) == kind


def _describe(value: Any) -> str:
    kind = _TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return f"{kind} {text[:40]}" if value is not None else "null"
