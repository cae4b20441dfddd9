"""`hub.hjson`: loading and validation, every problem as `FILE:LINE:COL: path.to.key: message`.

The file names the hub, the jobs to run (each with a section of its own, checked by the job's class),
the restart backoff, the local broker and its bridge to the home broker. A job whose module cannot be
imported is no configuration error: the hub runs without it and reports it failed (a missing camera
library must not stop the OBD logging); rules that use such a job are left out, with a log line.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet import hjsonpos, topics
from fleet.errors import ConfigError, ConfigIssue, Position, did_you_mean
from fleet.hjsonpos import Document, KeyPath
from hub import jobs
from hub.job import Job
from hub.jobs.rules import Rule, compile_rules

GENERAL_KEYS = ("id", "workdir", "debug", "info_interval", "restart", "jobs", "local_broker", "bridge")
DIRECTIONS = ("in", "out", "both")


@dataclass
class LocalBroker:
    """A Mosquitto run by the hub, bridged to the home broker (`--broker`); the jobs connect to it."""

    enabled: bool = False
    port: int = 1883
    host: str = "127.0.0.1"


@dataclass
class Bridge:
    """The Mosquitto bridge section: the car's topics go home and the fleet's come in, QoS 1, queued."""

    name: str = ""
    topics: list[tuple[str, str]] = field(default_factory=list)  # extra (pattern, direction)
    keepalive: int = 60
    restart: tuple[int, int] = (2, 30)  # Mosquitto restart_timeout: backoff base and cap, seconds


@dataclass
class HubConfig:
    doc: Document
    id: str = "hub"
    workdir: Path = Path("hub-data")
    debug: bool = False
    info_interval: float = 600.0
    restart_min: float = 1.0
    restart_max: float = 60.0
    jobs: list[str] = field(default_factory=list)  # the jobs that run, in the file's order
    classes: dict[str, type[Job]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # job → why its class did not load
    disabled: list[str] = field(default_factory=list)  # listed in the file, turned off by `only`
    local_broker: LocalBroker = field(default_factory=LocalBroker)
    bridge: Bridge = field(default_factory=Bridge)

    @property
    def path(self) -> str:
        return self.doc.filename

    def section(self, job: str) -> dict[str, Any]:
        data = self.doc.data.get(job)
        return data if isinstance(data, dict) else {}

    def rules(self, home: str) -> list[Rule]:
        """The rules that run, compiled for the topic root `home`."""
        if "rules" not in self.jobs:
            return []
        return compile_rules(self.section("rules"), self._lookup, home, self.id)[0]

    def _lookup(self, name: str) -> type[Job] | str | None:
        if name in self.classes:
            return self.classes[name]
        if name in self.failed:
            return f"did not load ({self.failed[name]})"
        if name in self.disabled:
            return "is turned off"
        return None


def load(path: str | Path, only: Iterable[str] | None = None) -> HubConfig:
    """Read and check `hub.hjson`; `only` keeps just those of its jobs. Raises ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(Position(str(path), 1, 1), "", f"cannot read: {exc.strerror}")]) \
            from None
    return loads(text, str(path), only)


def loads(text: str, filename: str = "<hub.hjson>", only: Iterable[str] | None = None) -> HubConfig:
    doc = hjsonpos.loads(text, filename)
    return _Checker(doc, set(only) if only is not None else None).check()


class _Checker:
    def __init__(self, doc: Document, only: set[str] | None) -> None:
        self.doc = doc
        self.only = only
        self.issues: list[ConfigIssue] = list(doc.duplicates)

    def issue(self, path: KeyPath, message: str) -> None:
        self.issues.append(self.doc.issue(path, message))

    def check(self) -> HubConfig:
        data = self.doc.data
        cfg = HubConfig(self.doc)
        if not isinstance(data, dict):
            self.issue((), "hub.hjson must be an object")
            raise ConfigError(self.issues)
        cfg.id = self.text(data, "id", "hub")
        if (why := topics.check_device_id(cfg.id)) is not None:
            self.issue(("id",), why)
        cfg.workdir = Path(self.text(data, "workdir", "hub-data"))
        cfg.debug = self.flag(data, ("debug",), False)
        cfg.info_interval = self.seconds(data, ("info_interval",), 600.0)
        self.restart(data, cfg)
        self.job_list(data, cfg)
        for key in data:
            if key not in GENERAL_KEYS and key not in jobs.REGISTRY:
                self.issue((key,), f"unknown key{did_you_mean(key, (*GENERAL_KEYS, *jobs.REGISTRY))}")
            elif key in jobs.REGISTRY and not isinstance(data[key], dict):
                self.issue((key,), "a job's section must be an object")
        for name, cls in cfg.classes.items():
            try:
                self.issues += cls.check(self.doc, (name,))
            except Exception as exc:  # a job's own checker must not hide the other problems
                self.issue((name,), f"the {name} job's check failed: {exc!r}")
        if "rules" in cfg.classes:
            _, problems, _ = compile_rules(cfg.section("rules"), cfg._lookup, "home", cfg.id)
            for path, message in problems:
                self.issue(("rules", *path), message)
        self.local_broker(data, cfg)
        self.bridge(data, cfg)
        if self.issues:
            raise ConfigError(sorted(self.issues, key=lambda i: (i.pos.line, i.pos.col)))
        return cfg

    def text(self, data: dict[str, Any], key: str, default: str, path: KeyPath = ()) -> str:
        value = data.get(key, default)
        if not isinstance(value, str) or not value:
            self.issue((*path, key), f"expected text, found {value!r}")
            return default
        return value

    def flag(self, data: dict[str, Any], path: KeyPath, default: bool) -> bool:
        value = data.get(path[-1], default)
        if not isinstance(value, bool):
            self.issue(path, f"expected true or false, found {value!r}")
            return default
        return value

    def seconds(self, data: dict[str, Any], path: KeyPath, default: float) -> float:
        value = data.get(path[-1], default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            self.issue(path, f"expected a number of seconds > 0, found {value!r}")
            return default
        return float(value)

    def restart(self, data: dict[str, Any], cfg: HubConfig) -> None:
        spec = data.get("restart", {})
        if not isinstance(spec, dict):
            self.issue(("restart",), "expected {min: seconds, max: seconds}")
            return
        for key in spec:
            if key not in ("min", "max"):
                self.issue(("restart", key), f"unknown key{did_you_mean(key, ('min', 'max'))}")
        cfg.restart_min = self.seconds(spec, ("restart", "min"), 1.0)
        cfg.restart_max = self.seconds(spec, ("restart", "max"), 60.0)
        if cfg.restart_max < cfg.restart_min:
            self.issue(("restart", "max"), "max must be at least min")

    def job_list(self, data: dict[str, Any], cfg: HubConfig) -> None:
        names = data.get("jobs", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            self.issue(("jobs",), "expected a list of job names")
            return
        for i, name in enumerate(names):
            if name not in jobs.REGISTRY:
                self.issue(("jobs", i), f"no job named {name!r}{did_you_mean(name, list(jobs.REGISTRY))}"
                                        f" (jobs: {', '.join(jobs.REGISTRY)})")
            elif name in cfg.jobs or name in cfg.disabled:
                self.issue(("jobs", i), f"job {name} is listed twice")
            elif self.only is not None and name not in self.only:
                cfg.disabled.append(name)
            else:
                cfg.jobs.append(name)
                try:
                    cfg.classes[name] = jobs.load(name)
                except Exception as exc:  # any import-time failure breaks this job only
                    cfg.failed[name] = traceback.format_exception_only(exc)[-1].strip()

    def local_broker(self, data: dict[str, Any], cfg: HubConfig) -> None:
        spec = data.get("local_broker", {})
        if not isinstance(spec, dict):
            self.issue(("local_broker",), "expected {enabled: true, port: 1883}")
            return
        for key in spec:
            if key not in ("enabled", "port", "host"):
                self.issue(("local_broker", key), f"unknown key{did_you_mean(key, ('enabled', 'port', 'host'))}")
        lb = cfg.local_broker
        lb.enabled = self.flag(spec, ("local_broker", "enabled"), False)
        port = spec.get("port", 1883)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            self.issue(("local_broker", "port"), f"expected a port number (0: any free port), found {port!r}")
        else:
            lb.port = port
        lb.host = self.text(spec, "host", "127.0.0.1", ("local_broker",))

    def bridge(self, data: dict[str, Any], cfg: HubConfig) -> None:
        spec = data.get("bridge", {})
        if not isinstance(spec, dict):
            self.issue(("bridge",), "expected {topics: [...], keepalive: 60, restart: [2, 30]}")
            return
        keys = ("name", "topics", "keepalive", "restart")
        for key in spec:
            if key not in keys:
                self.issue(("bridge", key), f"unknown key{did_you_mean(key, keys)}")
        br = cfg.bridge
        br.name = self.text(spec, "name", f"{cfg.id}-home", ("bridge",))
        br.keepalive = int(self.seconds(spec, ("bridge", "keepalive"), 60))
        restart = spec.get("restart", [2, 30])
        if (not isinstance(restart, list) or len(restart) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in restart)
                or restart[1] < restart[0]):
            self.issue(("bridge", "restart"), f"expected [base, cap] seconds, found {restart!r}")
        else:
            br.restart = (restart[0], restart[1])
        lines = spec.get("topics", [])
        if not isinstance(lines, list):
            self.issue(("bridge", "topics"), "expected a list of \"<pattern> in|out|both\"")
            return
        for i, line in enumerate(lines):
            parts = line.split() if isinstance(line, str) else []
            if len(parts) != 2 or parts[1] not in DIRECTIONS:
                self.issue(("bridge", "topics", i), f"expected \"<pattern> in|out|both\", found {line!r}")
            else:
                br.topics.append((parts[0], parts[1]))
