"""python-OBD values as JSON, the way obd-socketio encoded them: a number and its unit for quantities,
plain JSON (text, lists, objects) for status, trouble codes, O2-sensor values and the rest."""

from __future__ import annotations

import math
from typing import Any

import obd
from obd.OBDCommand import OBDCommand
from obd.OBDResponse import Monitor, MonitorTest, Status, StatusTest
from obd.utils import BitArray

Quantity = obd.Unit.Quantity


def find_command(name: object) -> OBDCommand | None:
    """The python-OBD command called `name` (`RPM`, `GET_DTC`…), or None for anything else."""
    if not isinstance(name, str) or not obd.commands.has_name(name):
        return None
    return obd.commands[name]


def all_command_names() -> list[str]:
    names = [c.name for mode in obd.commands.modes for c in mode if c is not None]
    return sorted({*names, "ELM_VERSION", "ELM_VOLTAGE"})


def describe(cmd: OBDCommand) -> dict[str, str]:
    return {"name": cmd.name, "desc": cmd.desc}


def _number(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN
    return x


def plain(value: Any) -> Any:
    """Any decoded python-OBD value as plain JSON data; a quantity inside becomes `{"value", "unit"}`."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, Quantity):
        return {"value": _number(value.magnitude), "unit": str(value.units)}
    if isinstance(value, bytes | bytearray):
        return value.decode("ascii", "replace")  # VIN, calibration ids: ASCII text
    if isinstance(value, BitArray):
        return str(value)  # "0110…"
    if isinstance(value, Status):
        tests = {k: plain(v) for k, v in vars(value).items() if isinstance(v, StatusTest) and v.available}
        return {"MIL": value.MIL, "DTC_count": value.DTC_count, "ignition_type": value.ignition_type,
                "tests": tests}
    if isinstance(value, StatusTest):
        return {"available": value.available, "complete": value.complete}
    if isinstance(value, Monitor):
        return [plain(t) for t in value.tests]
    if isinstance(value, MonitorTest):
        return {"tid": value.tid, "name": value.name, "desc": value.desc, "value": plain(value.value),
                "min": plain(value.min), "max": plain(value.max), "passed": value.passed}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    return str(value)


def value_and_unit(value: Any) -> tuple[Any, str | None]:
    """A top-level quantity splits into number and unit; anything else is plain JSON with no unit."""
    if isinstance(value, Quantity):
        return _number(value.magnitude), str(value.units)
    return plain(value), None


def response(resp: obd.OBDResponse) -> dict[str, Any]:
    """`{"value", "unit", "time", "command": {"name", "desc"}}` for one answer (PROTOCOL section 6)."""
    value, unit = value_and_unit(resp.value)
    return {"value": value, "unit": unit, "time": resp.time, "command": describe(resp.command)}
