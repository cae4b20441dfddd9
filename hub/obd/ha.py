"""Home Assistant sensors for watched OBD values: python-OBD's (pint) units in HA's words."""

from __future__ import annotations

from typing import Any

from obd.OBDCommand import OBDCommand

# pint unit → (HA unit_of_measurement, HA device_class or None)
UNITS: dict[str, tuple[str | None, str | None]] = {
    "revolutions_per_minute": ("rpm", None),
    "kilometer_per_hour": ("km/h", "speed"),
    "degree_Celsius": ("°C", "temperature"),
    "percent": ("%", None),
    "volt": ("V", "voltage"),
    "milliampere": ("mA", "current"),
    "kilopascal": ("kPa", "pressure"),
    "pascal": ("Pa", "pressure"),
    "gps": ("g/s", None),
    "liters_per_hour": ("L/h", "volume_flow_rate"),
    "degree": ("°", None),
    "second": ("s", "duration"),
    "minute": ("min", "duration"),
    "kilometer": ("km", "distance"),
    "ratio": (None, None),
    "count": (None, None),
}


def object_id(cmd: OBDCommand) -> str:
    return f"obd_{cmd.name.lower()}"


def sensor(cmd: OBDCommand, state_topic: str, unit: str) -> dict[str, Any]:
    """The entity of one watched quantity; the hub adds unique_id, availability and the device."""
    ha_unit, device_class = UNITS.get(unit, (unit, None))
    entity: dict[str, Any] = {
        "name": cmd.desc,
        "state_topic": state_topic,
        "value_template": "{{ value_json.value }}",
        "state_class": "measurement",
    }
    if ha_unit:
        entity["unit_of_measurement"] = ha_unit
    if device_class:
        entity["device_class"] = device_class
    return entity
