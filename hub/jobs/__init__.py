"""The hub's jobs, found by name. A job module is imported only when a `hub.hjson` names it, so a
missing optional dependency (picamera2, python-OBD …) breaks that job alone, never the hub."""

from __future__ import annotations

import importlib

from hub.job import Job

# name → "module" (the Job subclass in it whose NAME is the name) or "module:Class".
REGISTRY: dict[str, str | type[Job]] = {
    "obd": "hub.jobs.obd",
    "camera": "hub.jobs.camera",
    "upload": "hub.jobs.upload",
    "power": "hub.jobs.power",
    "rules": "hub.jobs.rules:RulesJob",
    "stats": "hub.jobs.stats:StatsJob",
}


def register(name: str, target: str | type[Job]) -> None:
    """Make a job known by `name` (plugins, tests): a Job subclass or its "module[:Class]"."""
    REGISTRY[name] = target


def load(name: str) -> type[Job]:
    """The job class registered as `name`. KeyError when no job has that name; ImportError (or any error
    the module raises on import) when it cannot be loaded."""
    target = REGISTRY[name]
    if not isinstance(target, str):
        return target
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    if class_name:
        cls = getattr(module, class_name)
    else:
        found = [c for c in vars(module).values()
                 if isinstance(c, type) and issubclass(c, Job) and name == c.NAME]
        if not found:
            raise ImportError(f"{module_name} has no Job subclass with NAME = {name!r}")
        cls = found[0]
    if not (isinstance(cls, type) and issubclass(cls, Job)):
        raise ImportError(f"{target} is not a hub.job.Job subclass")
    return cls
