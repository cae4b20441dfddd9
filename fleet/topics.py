"""Topic names and filters of docs/PROTOCOL.md, in one place for all host code."""

from __future__ import annotations

import re

DEVICE_ID = re.compile(r"[a-z0-9_-]{1,32}")
RESERVED_IDS = frozenset({"log", "config", "_sim"})
RESERVED_COMPONENTS = frozenset({"set", "status", "info", "cmd", "config"})
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DISCOVERY_PREFIX = "homeassistant"
HA_STATUS = "homeassistant/status"


def check_device_id(device_id: str) -> str | None:
    """Why `device_id` is not a valid device id, or None when it is."""
    if not DEVICE_ID.fullmatch(device_id):
        return f"device id {device_id!r} must match [a-z0-9_-]{{1,32}}"
    if device_id in RESERVED_IDS:
        return f"device id {device_id!r} is reserved"
    return None


def status(home: str, device: str) -> str:
    return f"{home}/{device}/status"


def info(home: str, device: str) -> str:
    return f"{home}/{device}/info"


def state(home: str, device: str, component: str) -> str:
    return f"{home}/{device}/{component}"


def command(home: str, device: str, component: str) -> str:
    return f"{home}/{device}/{component}/set"


def log(home: str, level: str, device: str) -> str:
    return f"{home}/log/{level}/{device}"


def config_request(home: str, device: str) -> str:
    return f"{home}/config/request/{device}"


def config_reply(home: str, device: str) -> str:
    return f"{home}/{device}/config"


def config_ack(home: str, device: str) -> str:
    return f"{home}/config/ack/{device}"


def sim(home: str, device: str, part: str, name: str) -> str:
    return f"{home}/_sim/{device}/{part}/{name}"


def discovery(platform: str, device: str, obj: str) -> str:
    return f"{DISCOVERY_PREFIX}/{platform}/{device}/{obj}/config"


def strip_share(topic_filter: str) -> str:
    """The plain filter of an MQTT 5 shared subscription (`$share/<group>/<filter>`)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching with `+` and `#`; `$`-topics never match a leading wildcard."""
    topic_filter = strip_share(topic_filter)
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, f in enumerate(f_parts):
        if f == "#":
            return True
        if i >= len(t_parts):
            return False
        if f != "+" and f != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)
