"""The `obd` section of hub.hjson: its keys, their defaults, and the check that names file:line:col.

```hjson
obd: {
  port: socket://127.0.0.1:35000   # or /dev/ttyUSB0, /dev/rfcomm0
  baudrate: 38400                  # optional: python-OBD tries the usual ones
  protocol: "6"                    # optional: skips the protocol search (about 3 s)
  watch: {RPM: 2, SPEED: 1, COOLANT_TEMP: 0.2}   # command → answers per second (0: as fast as it goes)
  dtc_interval: 60                 # seconds between trouble-code reads (0: never)
  low_voltage: 11.8                # volts at the adapter below which polling stops (null: never)
  voltage_interval: 30             # seconds between voltage reads
  retry: [1, 30]                   # reconnect backoff, first and longest wait in seconds
}
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleet.errors import ConfigIssue, did_you_mean
from fleet.hjsonpos import Document
from hub.obd.encode import all_command_names, find_command
from hub.obd.link import LinkSettings


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _positive(v: Any) -> str | None:
    return None if _number(v) and v > 0 else "must be a number above 0"


def _not_negative(v: Any) -> str | None:
    return None if _number(v) and v >= 0 else "must be a number, 0 or more"


def _check_port(v: Any) -> str | None:
    if isinstance(v, str) and v.strip():
        return None
    return "must name the adapter: a serial device (/dev/ttyUSB0, /dev/rfcomm0) or socket://host:port"


def _check_baudrate(v: Any) -> str | None:
    return None if v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0) else \
        "must be a whole number of bits per second (38400), or null"


def _check_protocol(v: Any) -> str | None:
    ok = v is None or (isinstance(v, str | int) and not isinstance(v, bool) and str(v) in "123456789ABC"
                       and len(str(v)) == 1)
    return None if ok else 'must be an ELM327 protocol number "1"…"9", "A"…"C", or null'


def _check_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _check_low_voltage(v: Any) -> str | None:
    return None if v is None else _positive(v)


def _check_retry(v: Any) -> str | None:
    if isinstance(v, list) and len(v) == 2 and all(_number(x) and x > 0 for x in v) and v[0] <= v[1]:
        return None
    return "must be [first, longest] wait in seconds, both above 0, first not above longest"


KEYS = {
    "port": _check_port,
    "baudrate": _check_baudrate,
    "protocol": _check_protocol,
    "fast": _check_bool,
    "timeout": _positive,
    "watch": None,  # checked per command below
    "default_rate": _not_negative,
    "dtc_interval": _not_negative,
    "low_voltage": _check_low_voltage,
    "voltage_interval": _positive,
    "retry": _check_retry,
    "discovery": _check_bool,
}


def watch_issue(name: Any) -> str | None:
    """Why `name` cannot be watched, or None."""
    cmd = find_command(name)
    if cmd is None:
        return f"unknown command {name}{did_you_mean(str(name), all_command_names())}"
    if cmd.mode == 4:
        return f"{name} clears the trouble codes: it is never polled"
    return None


def check(doc: Document, path: tuple[str | int, ...]) -> list[ConfigIssue]:
    section = doc.get(path)
    if not isinstance(section, dict):
        return [doc.issue(path, "must be an object with at least `port`")]
    issues: list[ConfigIssue] = []
    if "port" not in section:
        issues.append(doc.issue(path, "missing `port`: the adapter's serial device or socket://host:port"))
    for key, value in section.items():
        if key not in KEYS:
            issues.append(doc.issue((*path, key), f"unknown key{did_you_mean(key, list(KEYS))}"))
            continue
        test = KEYS[key]
        if test is not None and (problem := test(value)):
            issues.append(doc.issue((*path, key), problem))
    watch = section.get("watch", {})
    if not isinstance(watch, dict):
        issues.append(doc.issue((*path, "watch"), "must map command names to answers per second"))
        return issues
    for name, rate in watch.items():
        if problem := watch_issue(name) or _not_negative(rate):
            issues.append(doc.issue((*path, "watch", name), problem))
    return issues


@dataclass(frozen=True)
class Options:
    link: LinkSettings
    watch: dict[str, float] = field(default_factory=dict)
    default_rate: float = 1.0
    dtc_interval: float = 60.0
    low_voltage: float | None = 11.8
    voltage_interval: float = 30.0
    discovery: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Options:
        """The options of a checked section, defaults filled in."""
        retry = config.get("retry", [1.0, 30.0])
        protocol = config.get("protocol")
        link = LinkSettings(
            port=config["port"], baudrate=config.get("baudrate"),
            protocol=None if protocol is None else str(protocol), fast=config.get("fast", True),
            timeout=float(config.get("timeout", 0.1)), retry_min=float(retry[0]), retry_max=float(retry[1]))
        return cls(
            link=link, watch={k: float(v) for k, v in config.get("watch", {}).items()},
            default_rate=float(config.get("default_rate", 1.0)),
            dtc_interval=float(config.get("dtc_interval", 60.0)),
            low_voltage=config.get("low_voltage", 11.8),
            voltage_interval=float(config.get("voltage_interval", 30.0)),
            discovery=config.get("discovery", True))
