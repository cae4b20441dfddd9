"""The device registry: `DIR/<id>.hjson` files, read once, re-read when they (or their includes) change.

An invalid file never replaces the last valid version of its device: that one stays in service and the
error is logged. A registry folder that vanishes keeps every device in service until it comes back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from config_server.declarations import Library
from config_server.devicefile import Checked, DeviceConfig, DocCache, device_id_of, is_device_file, read_device
from config_server.pieces import Assembled, assemble, version
from config_server.state import State
from fleet.errors import ConfigIssue, Position

log = logging.getLogger("config_server.registry")

_Stamp = tuple[int, int] | None  # (mtime_ns, size), None when the file is missing


@dataclass(frozen=True)
class Served:
    """The version of a device's config in service."""

    config: DeviceConfig
    assembled: Assembled
    counter: int
    key: bytes | None = None  # the device's signing key (docs/PROTOCOL.md 4.5), when it has one

    @property
    def v(self) -> str:
        return version(self.counter, self.assembled.hash8)


@dataclass(frozen=True)
class Change:
    """What a scan found for one device: `new`, `updated`, `invalid` (the last valid stays) or `removed`."""

    device: str
    kind: str
    served: Served | None
    checked: Checked | None


def device_files(folder: Path) -> list[Path]:
    return sorted(folder / e.name for e in os.scandir(folder) if e.is_file() and is_device_file(Path(e.name)))


def read_key(keys: Path | None, device: str) -> bytes | None:
    """`KEYS/<id>.key`: 64 hex digits (or raw bytes)."""
    if keys is None:
        return None
    try:
        raw = (keys / f"{device}.key").read_bytes().strip()
    except FileNotFoundError:
        return None
    try:
        return bytes.fromhex(raw.decode()) if len(raw) == 64 else raw
    except (UnicodeDecodeError, ValueError):
        return raw


class Registry:
    """Device files under `folder`, checked against `library`; versions come from `state` (None: all 1)."""

    def __init__(self, folder: Path, library: Library, state: State | None = None, keys: Path | None = None):
        self.folder = Path(folder)
        self.library = library
        self.state = state
        self.keys = keys
        self.served: dict[str, Served] = {}
        self.checked: dict[str, Checked] = {}
        self.folder_missing = False
        self._stamps: dict[str, dict[Path, _Stamp]] = {}
        self._docs: DocCache = {}  # shared includes are parsed once for all devices

    def scan(self) -> list[Change]:
        """Re-read every device whose files changed since the last scan; report what changed."""
        try:
            paths = device_files(self.folder)
        except OSError as e:
            if not self.folder_missing:
                log.error("registry folder %s: %s; serving the last valid configs of %d devices until it is back",
                          self.folder, e.strerror or e, len(self.served))
            self.folder_missing = True
            return []
        if self.folder_missing:
            log.warning("registry folder %s is back", self.folder)
            self.folder_missing = False
        stat_cache: dict[Path, _Stamp] = {}
        force = self.library.refresh()
        changes: list[Change] = []
        present = {device_id_of(p): p for p in paths}
        for device in [d for d in self.checked if d not in present]:
            self.checked.pop(device)
            self._stamps.pop(device, None)
            served = self.served.pop(device, None)
            log.info("%s: device file removed; no longer served", device)
            changes.append(Change(device, "removed", served, None))
        for device, path in present.items():
            old = self._stamps.get(device)
            if not force and old is not None and all(_stamp(p, stat_cache) == s for p, s in old.items()):
                continue
            try:
                change = self._read(device, path)
            except Exception as e:  # a fault of the reader: this device keeps its last version, the rest go on
                log.exception("%s: reading %s failed", device, path)
                self.checked[device] = Checked(device, path, None, [ConfigIssue(Position(str(path), 1, 1), "",
                                               f"internal error while reading: {e!r}")], [], [path])
                change = Change(device, "invalid", self.served.get(device), self.checked[device])
            self._stamps[device] = {p: _stamp(p, stat_cache) for p in self._watched(device, change.checked)}
            if change.kind != "same":
                changes.append(change)
        return changes

    def _watched(self, device: str, checked: Checked | None) -> list[Path]:
        files = list(checked.files) if checked else []
        if self.keys is not None:
            files.append(self.keys / f"{device}.key")
        return files

    def _read(self, device: str, path: Path) -> Change:
        checked = read_device(path, self.library, self._docs)
        self.checked[device] = checked
        for warning in checked.warnings:
            log.warning("%s", warning)
        previous = self.served.get(device)
        if checked.config is None:
            kept = f"; version {previous.v} stays in service" if previous else "; not served"
            log.error("%s: refused, %d error%s%s:\n%s", device, len(checked.issues),
                      "s" if len(checked.issues) != 1 else "", kept, "\n".join(map(str, checked.issues)))
            return Change(device, "invalid", previous, checked)
        assembled = assemble(checked.config)
        key = read_key(self.keys, device)
        if previous is not None and previous.assembled.digest == assembled.digest and previous.key == key:
            self.served[device] = Served(checked.config, assembled, previous.counter, key)
            return Change(device, "same", self.served[device], checked)
        counter = self.state.version_for(device, assembled.hash8) if self.state else 1
        served = self.served[device] = Served(checked.config, assembled, counter, key)
        log.info("%s: version %s (%d components, %d bytes)", device, served.v, len(checked.config.order),
                 assembled.size)
        return Change(device, "updated" if previous else "new", served, checked)


def _stamp(path: Path, cache: dict[Path, _Stamp]) -> _Stamp:
    if path not in cache:
        try:
            st = path.stat()
            cache[path] = (st.st_mtime_ns, st.st_size)
        except OSError:
            cache[path] = None
    return cache[path]
