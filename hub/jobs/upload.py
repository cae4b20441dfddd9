"""The upload job: every closed camera segment (and any file a rule adds) goes to every configured
target, verified, and survives crashes on the way (docs/UPLOAD.md).

It queues what `<home>/<hub>/camera/segment` announces and what `<home>/<hub>/upload/set` adds
(`{"add": "/path"}`), and at start any file under its `scan` patterns the queue has never seen (closed
while the hub was down). Progress goes to `<home>/<hub>/upload` (retained); each file verified on every
target to `<home>/<hub>/upload/done`, which is what lets the camera's loop recording delete it.
For the key-off sequence it offers `upload.wait_empty`: the reply on `<home>/<hub>/upload/empty` is
`empty` once the queue is drained, or `unreachable` as soon as no target holding files can be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import aiomqtt

from fleet.errors import BrokerError, ConfigIssue, did_you_mean
from fleet.hjsonpos import Document, KeyPath
from hub.job import Action, Event, Hub, Job
from hub.upload.queue import Queue
from hub.upload.sftp import VERIFY
from hub.upload.uploader import TARGET_TYPES, Uploader, make_target, parse_address

KEYS = ("queue", "scan", "targets", "retry", "progress")
TARGET_KEYS = {
    "sftp": ("type", "host", "port", "user", "key", "known_hosts", "path", "verify", "timeout", "when_reachable"),
    "https": ("type", "url", "ca", "cert", "key", "timeout", "when_reachable"),
}
REQUIRED = {"sftp": ("host", "user", "key", "known_hosts"), "https": ("url",)}
DEFAULTS: dict[str, Any] = {"queue": "upload.db", "scan": ["camera/*.mp4"], "retry": {"first": 2, "max": 300},
                            "progress": 1.0}
KEEP_DONE = 30 * 86400.0  # seconds a finished row is kept after its file is gone
_SHA256 = re.compile(r"[0-9a-f]{64}")


class UploadJob(Job):
    NAME = "upload"
    ACTIONS: ClassVar[dict[str, Action]] = {
        # Replies `empty` or `unreachable` (never times out before the power job's hard deadline does).
        "wait_empty": Action("upload/set", "wait_empty", reply="upload/empty", timeout=24 * 3600.0),
        "flush": Action("upload/set", "flush"),
    }
    EVENTS: ClassVar[dict[str, Event]] = {
        "done": Event("upload/done"),
        "empty": Event("upload/empty", "empty"),
    }

    def __init__(self, hub: Hub, config: dict[str, Any]) -> None:
        super().__init__(hub, config)
        conf = {**DEFAULTS, **(config or {})}
        self.scan = [str(p) for p in conf["scan"]]
        self.interval = float(conf["progress"])
        self.uploader = build_uploader(Path(hub.workdir), hub.id, conf, self.log, self._done)
        self.queue = self.uploader.queue

    # -- hub.hjson ---------------------------------------------------------------------------------

    @classmethod
    def check(cls, doc: Document, path: KeyPath) -> list[ConfigIssue]:
        section = doc.get(path)
        if not isinstance(section, dict):
            return [doc.issue(path, "the upload section must be an object")]
        issues = [doc.issue((*path, k), f"unknown key{did_you_mean(k, KEYS)}") for k in section if k not in KEYS]
        scan = section.get("scan", [])
        if not isinstance(scan, list) or not all(isinstance(s, str) and s for s in scan):
            issues.append(doc.issue((*path, "scan"), "expected a list of file patterns like camera/*.mp4"))
        retry = section.get("retry", {})
        if not isinstance(retry, dict) or any(k not in ("first", "max") or isinstance(v, bool)
                                              or not isinstance(v, int | float) or v <= 0 for k, v in retry.items()):
            issues.append(doc.issue((*path, "retry"), "expected {first: seconds, max: seconds}, both > 0"))
        progress = section.get("progress", 1.0)
        if isinstance(progress, bool) or not isinstance(progress, int | float) or progress <= 0:
            issues.append(doc.issue((*path, "progress"), f"expected seconds > 0, found {progress!r}"))
        targets = section.get("targets")
        if not isinstance(targets, dict) or not targets:
            issues.append(doc.issue((*path, "targets") if "targets" in section else path,
                                    "expected targets: {name: {type: sftp or https, …}}"))
            return issues
        for name, spec in targets.items():
            issues += _check_target(doc, (*path, "targets", name), spec)
        return issues

    # -- life --------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.queue.prune(time.time() - KEEP_DONE)
        found = await self.uploader.scan(Path(self.hub.workdir), self.scan)
        if found:
            self.log.info("queued %d file(s) found on disk that were never queued", found)
        await self.hub.announce("sensor", "upload_queued", {
            "name": "Uploads queued", "state_topic": self.hub.topic("upload"),
            "value_template": "{{ value_json.queued }}", "icon": "mdi:cloud-upload"})
        filters = [self.hub.topic("camera", "segment"), self.hub.topic("upload", "set")]
        try:
            async with asyncio.TaskGroup() as tasks:
                # Both run for the job's life; they end when the job is cancelled at hub shutdown.
                tasks.create_task(self.uploader.run(), name="upload-workers")
                tasks.create_task(self._progress_loop(), name="upload-progress")
                async with self.hub.subscribe(filters) as messages:
                    async for msg in messages:
                        self._on_message(tasks, msg.topic.value, bytes(msg.payload or b""))  # type: ignore[arg-type]
        finally:
            self.queue.close()

    def _on_message(self, tasks: asyncio.TaskGroup, topic: str, payload: bytes) -> None:
        text = payload.decode(errors="replace").strip()
        try:
            if topic == self.hub.topic("camera", "segment"):
                data = json.loads(text)
                path, size, digest = data["path"], data.get("size"), data.get("sha256")
                if not isinstance(path, str) or not Path(path).is_absolute():
                    raise ValueError("path must be an absolute path")
                if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
                    raise ValueError("size must be a number of bytes")
                if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
                    raise ValueError("sha256 must be 64 lowercase hex digits")
                self.uploader.add(path, size, digest)
            elif text == "flush":
                self.uploader.flush()
            elif text == "wait_empty":
                # Started per request; ends once it has replied (or with the job).
                tasks.create_task(self._reply_when_empty(), name="upload-wait-empty")
            elif text.startswith("{"):
                path = json.loads(text)["add"]
                if not isinstance(path, str) or not Path(path).is_file():
                    raise ValueError(f"no such file: {path!r}")
                self.uploader.add(path)
            else:
                raise ValueError("expected flush, wait_empty or {\"add\": \"/path\"}")
        except (ValueError, KeyError, TypeError, OSError) as exc:
            self.log.warning("dropped a malformed message on %s (%s): %r", topic, exc, text[:200])

    async def _reply_when_empty(self) -> None:
        result = await self.uploader.wait_empty()
        self.log.info("wait_empty: %s", result)
        await self.hub.publish(self.hub.topic("upload", "empty"), result, qos=1)

    async def _done(self, info: dict[str, Any]) -> None:
        if not info["complete"]:
            return  # the camera may delete a file only once every target has it
        verified = {r["target"]: r["verified"] for r in self.queue.rows("done") if r["path"] == info["path"]}
        payload = {"path": info["path"], "size": info["size"], "sha256": info["sha256"], "verified": verified}
        try:
            await self.hub.publish(self.hub.topic("upload", "done"), json.dumps(payload, separators=(",", ":")),
                                   qos=1)
        except (BrokerError, aiomqtt.MqttError) as exc:
            # the file is safe and marked done; only the camera's quota misses the news until a restart
            self.log.warning("upload/done for %s not sent: %s", info["path"], exc)

    async def _progress_loop(self) -> None:
        last: dict[str, Any] | None = None
        while True:
            status = self.uploader.status()
            if status != last:
                with contextlib.suppress(BrokerError, aiomqtt.MqttError):
                    await self.hub.publish(self.hub.topic("upload"), json.dumps(status, separators=(",", ":")),
                                           qos=0, retain=True)
                    last = status
            await asyncio.sleep(self.interval)


def build_uploader(workdir: Path, hub_id: str, section: dict[str, Any], log: logging.Logger,
                   on_done: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> Uploader:
    """The uploader an `upload` section describes (checked already), its queue in `workdir`."""
    conf = {**DEFAULTS, **section}
    specs: dict[str, dict[str, Any]] = conf.get("targets", {})
    targets = {name: make_target(name, spec) for name, spec in specs.items()}
    probes = {name: parse_address(spec["when_reachable"]) for name, spec in specs.items() if spec.get("when_reachable")}
    retry = {**DEFAULTS["retry"], **conf["retry"]}
    return Uploader(Queue(workdir / conf["queue"]), targets, hub_id=hub_id, when_reachable=probes,
                    retry_first=float(retry["first"]), retry_max=float(retry["max"]), log=log, on_done=on_done)


def _check_target(doc: Document, path: KeyPath, spec: Any) -> list[ConfigIssue]:
    if not isinstance(spec, dict):
        return [doc.issue(path, "a target must be an object with type: sftp or https")]
    kind = spec.get("type")
    if kind not in TARGET_TYPES:
        return [doc.issue((*path, "type") if "type" in spec else path,
                          f"type must be one of {', '.join(TARGET_TYPES)}, not {kind!r}")]
    issues = [doc.issue((*path, k), f"unknown key for an {kind} target{did_you_mean(k, TARGET_KEYS[kind])}")
              for k in spec if k not in TARGET_KEYS[kind]]
    issues += [doc.issue(path, f"missing {k!r}") for k in REQUIRED[kind] if k not in spec]
    for key in ("host", "user", "key", "known_hosts", "path", "url", "ca", "cert"):
        if key in spec and (not isinstance(spec[key], str) or not spec[key]):
            issues.append(doc.issue((*path, key), "expected a non-empty text"))
    if "verify" in spec and spec["verify"] not in VERIFY:
        issues.append(doc.issue((*path, "verify"), f"expected one of {', '.join(VERIFY)}"))
    if "when_reachable" in spec:
        try:
            parse_address(spec["when_reachable"])
        except ValueError as exc:
            issues.append(doc.issue((*path, "when_reachable"), str(exc)))
    if kind == "https" and isinstance(spec.get("url"), str) and "{name}" not in spec["url"]:
        issues.append(doc.issue((*path, "url"), "the URL must hold {name} (each file its own URL)"))
    if issues:
        return issues
    try:
        make_target(str(path[-1]), spec)
    except (ValueError, TypeError, OSError) as exc:  # a bad URL, an unreadable CA or client cert
        issues.append(doc.issue(path, str(exc)))
    return issues
