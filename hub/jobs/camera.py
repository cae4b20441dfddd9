"""The camera job: dashcam recording in MP4 segments that survive power cuts (docs/CAMERA.md).

It owns the segment folder and one recorder process at a time (`hub.camera.recorder`), and speaks
PROTOCOL.md section 6: commands on `<home>/<hub>/camera/set`, state retained on `<home>/<hub>/camera`,
each closed segment on `<home>/<hub>/camera/segment`. It learns which segments are uploaded from
`<home>/<hub>/upload/done`, so loop recording deletes uploaded footage first. While armed it records
whenever the ignition (`<home>/<hub>/ignition`) is on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import aiomqtt

from fleet.errors import BrokerError, ConfigIssue, did_you_mean
from fleet.hjsonpos import Document, KeyPath
from hub.camera import BACKENDS, TESTSRC, RecorderError, Settings, parse_size
from hub.camera.recorder import Recorder
from hub.camera.segments import Segment, recover
from hub.camera.store import SegmentStore
from hub.job import Action, Event, Hub, Job

DEFAULTS: dict[str, Any] = {
    "backend": "pyav", "source": TESTSRC, "width": 1280, "height": 720, "fps": 30, "segment": 60,
    "gop": 2, "preset": "veryfast", "crf": 26, "bitrate": 4_000_000, "realtime": True, "sync": 1.0,
    "folder": "camera", "quota": "8G", "hard_limit": "10G", "clip": 30, "armed": False,
}
_NUMBERS: dict[str, tuple[type, float, float]] = {  # key → (type, lowest, highest)
    "width": (int, 16, 7680), "height": (int, 16, 4320), "fps": (int, 1, 240), "segment": (float, 0.5, 3600),
    "gop": (float, 0.04, 600), "crf": (int, 0, 51), "bitrate": (int, 100_000, 100_000_000),
    "sync": (float, 0.05, 600), "clip": (float, 1, 3600),
}
_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
STATE_FILE = ".camera.json"


class CameraJob(Job):
    NAME = "camera"
    ACTIONS: ClassVar[dict[str, Action]] = {
        # Each reply is the camera state, published once the command has taken effect: `start` and `clip`
        # when the capture has begun, `stop` when the last segment is closed and announced.
        "start": Action("camera/set", "start", reply="camera"),
        "stop": Action("camera/set", "stop", reply="camera", timeout=30.0),
        "clip": Action("camera/set", "clip", reply="camera"),
        "arm": Action("camera/set", "arm", reply="camera"),
        "disarm": Action("camera/set", "disarm", reply="camera"),
    }
    EVENTS: ClassVar[dict[str, Event]] = {"segment": Event("camera/segment")}

    def __init__(self, hub: Hub, config: dict[str, Any]) -> None:
        super().__init__(hub, config)
        conf = {**DEFAULTS, **(config or {})}
        self.folder = Path(hub.workdir) / str(conf["folder"])
        self.settings = Settings.from_dict({**conf, "folder": str(self.folder)})
        self.clip_seconds = float(conf["clip"])
        self.store = SegmentStore(self.folder, parse_size(conf["quota"]), parse_size(conf["hard_limit"]), self.log)
        self.armed = self._load_armed(bool(conf["armed"]))
        self.ignition = False
        self.recorder: Recorder | None = None
        self.capture: str | None = None
        self.kind: str | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._follower: asyncio.Task[None] | None = None
        self._cpu: tuple[float, float] | None = None  # (monotonic, cpu seconds) at the last stats() call

    # -- hub.hjson ---------------------------------------------------------------------------------

    @classmethod
    def check(cls, doc: Document, path: KeyPath) -> list[ConfigIssue]:
        section = doc.get(path)
        if section is None:
            return []  # no section: every default
        if not isinstance(section, dict):
            return [doc.issue(path, "the camera section must be an object")]
        issues = []
        for key, value in section.items():
            at = (*path, key)
            if key not in DEFAULTS:
                issues.append(doc.issue(at, f"unknown key{did_you_mean(key, list(DEFAULTS))}"))
            elif key == "backend" and value not in BACKENDS:
                issues.append(doc.issue(at, f"must be one of {', '.join(BACKENDS)}, not {value!r}"))
            elif key == "preset" and value not in _PRESETS:
                issues.append(doc.issue(at, f"must be a libx264 preset ({', '.join(_PRESETS)}), not {value!r}"))
            elif key in ("source", "folder") and (not isinstance(value, str) or not value):
                issues.append(doc.issue(at, "must be a non-empty text"))
            elif key in ("realtime", "armed") and not isinstance(value, bool):
                issues.append(doc.issue(at, "must be true or false"))
            elif key in ("quota", "hard_limit"):
                try:
                    parse_size(value)
                except ValueError as exc:
                    issues.append(doc.issue(at, str(exc)))
            elif key in _NUMBERS:
                kind, low, high = _NUMBERS[key]
                ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
                if not ok or (kind is int and value != int(value)):
                    what = "a whole number" if kind is int else "a number"
                    issues.append(doc.issue(at, f"must be {what} from {low:g} to {high:g}, not {value!r}"))
        if issues:
            return issues
        conf = {**DEFAULTS, **section}
        if any(conf[k] % 2 for k in ("width", "height")):
            issues.append(doc.issue((*path, "width" if conf["width"] % 2 else "height"), "must be even (4:2:0 video)"))
        if parse_size(conf["hard_limit"]) < parse_size(conf["quota"]):
            issues.append(doc.issue((*path, "hard_limit"), "must be at least the quota"))
        periods = conf["segment"] / conf["gop"]
        if conf["backend"] == "picamera2" and abs(periods - round(periods)) > 1e-6:
            issues.append(doc.issue((*path, "segment"), "with picamera2 it must be a multiple of gop: the "
                                    "hardware encoder makes keyframes only every gop seconds"))
        return issues

    # -- life --------------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.settings.backend == "picamera2" and importlib.util.find_spec("picamera2") is None:
            raise ImportError("backend picamera2: the picamera2 module is not installed (it runs only on a "
                              "Raspberry Pi, with libcamera); choose backend pyav elsewhere")
        recovered = await asyncio.to_thread(recover, self.folder)
        for segment in recovered:
            self.log.warning("recovered %s (%.2f s) left open by a crash or power cut",
                             Path(segment.path).name, segment.duration)
            await self._announce(segment)
        await self._enforce_quota()
        await self.hub.announce("switch", "camera", {
            "name": "Dashcam recording", "state_topic": self.hub.topic("camera"),
            "command_topic": self.hub.topic("camera", "set"), "payload_on": "start", "payload_off": "stop",
            # HA compares the state with payload_on/off unless state_on/off are given
            "value_template": "{{ 'ON' if value_json.state == 'recording' else 'OFF' }}", "state_on": "ON",
            "state_off": "OFF", "icon": "mdi:cctv"})
        await self.hub.announce("button", "camera_clip", {
            "name": "Dashcam clip", "command_topic": self.hub.topic("camera", "set"), "payload_press": "clip"})
        filters = [self.hub.topic("camera", "set"), self.hub.topic("upload", "done"), self.hub.topic("ignition")]
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                try:
                    async with self.hub.subscribe(filters) as messages:
                        await self._publish_state()  # once subscribed: a client that sees it can command us
                        async for msg in messages:
                            await self._on_message(msg)
                finally:
                    # Also on cancellation: the open segment is closed and announced before the job ends.
                    if self.recorder is not None:
                        await self.recorder.stop()
                    if self._follower is not None:
                        await asyncio.wait([self._follower])
        except* RecorderError as group:
            raise group.exceptions[0] from None  # the service reports the recorder's own error

    async def _on_message(self, msg: aiomqtt.Message) -> None:
        topic = msg.topic.value
        text = msg.payload.decode(errors="replace") if isinstance(msg.payload, bytes) else str(msg.payload)
        if topic == self.hub.topic("camera", "set"):
            await self._command(text.strip())
        elif topic == self.hub.topic("upload", "done"):
            try:
                path = json.loads(text)["path"]
                if not isinstance(path, str):
                    raise TypeError("path is not a text")
            except (ValueError, KeyError, TypeError) as exc:
                self.log.warning("dropped a malformed message on %s (%s): %r", topic, exc, text[:200])
                return
            if await asyncio.to_thread(self.store.mark_uploaded, path):
                await self._enforce_quota()
        elif topic == self.hub.topic("ignition") and text:  # empty: a retained state cleared, no news
            if text not in ("ON", "OFF"):
                self.log.warning("dropped a malformed message on %s: %r", topic, text[:200])
                return
            self.ignition = text == "ON"
            if self.armed:
                await (self._start("loop") if self.ignition else self._stop())

    async def _command(self, text: str) -> None:
        clip: float | None = None
        if text.startswith("{"):
            try:
                data = json.loads(text)
                clip = float(data["clip"])
                if not 1 <= clip <= 3600:
                    raise ValueError("clip must be 1 to 3600 seconds")
            except (ValueError, KeyError, TypeError) as exc:
                self.log.warning("dropped a malformed command on %s (%s): %r", self.hub.topic("camera", "set"),
                                 exc, text[:200])
                return
            text = "clip"
        if text == "start":
            await self._start("loop")
        elif text == "stop":
            await self._stop()
        elif text == "clip":
            await self._start("clip", clip or self.clip_seconds)
        elif text in ("arm", "disarm"):
            self.armed = text == "arm"
            await asyncio.to_thread(self._save_armed)
            if self.armed and self.ignition:
                await self._start("loop")
            else:
                await self._publish_state()
        else:
            self.log.warning("dropped an unknown command on %s: %r (start, stop, clip, arm, disarm)",
                             self.hub.topic("camera", "set"), text[:200])

    async def _start(self, mode: str, clip: float | None = None) -> None:
        """Begin a loop recording or a clip; the state follows when the capture has begun."""
        if self.recorder is not None:
            # loop during a clip: the loop follows the clip; clip during a clip: it is extended
            await self.recorder.send("loop" if mode == "loop" else f"clip {clip}")
            if self.capture and (mode == "loop" or self.kind == "clip"):
                await self._publish_state()  # no capture begins: the reply is the current state
            return
        recorder = Recorder(self.settings, self.log)
        await recorder.start(mode, clip)
        self.recorder = recorder
        assert self._tasks is not None
        # Started when a recording starts; ends when its recorder process exits. A recorder that fails
        # raises here, which ends this run of the job (the service restarts it; the restart recovers).
        self._follower = self._tasks.create_task(self._follow(recorder), name=f"camera-recorder-{recorder.pid}")

    async def _stop(self) -> None:
        if self.recorder is None:
            await self._publish_state()
            return
        await self.recorder.stop()  # _follow publishes the state once the last segment is announced

    async def _follow(self, recorder: Recorder) -> None:
        try:
            async for event in recorder.events():
                if event.get("event") == "capture":
                    self.capture, self.kind = event.get("capture"), event.get("kind")
                    await self._publish_state()
                elif event.get("event") == "segment":
                    event.pop("event")
                    await self._announce(Segment(**event))
                    await self._enforce_quota()
                    await self._publish_state()
                elif event.get("event") == "stopped" and event.get("skipped"):
                    self.log.info("%d packets before the first keyframe were not recorded", event["skipped"])
        finally:
            if self.recorder is recorder:
                self.recorder, self.capture, self.kind = None, None, None
                await self._publish_state()

    # -- publishing --------------------------------------------------------------------------------

    async def _announce(self, segment: Segment) -> None:
        try:
            await self.hub.publish(self.hub.topic("camera", "segment"),
                                   json.dumps(segment.announcement(), separators=(",", ":")), qos=1)
        except (BrokerError, aiomqtt.MqttError) as exc:
            # Recording goes on without the link; the upload job also finds segments by scanning the folder.
            self.log.warning("%s not announced: %s", Path(segment.path).name, exc)

    async def _publish_state(self) -> None:
        segments, used, free = await asyncio.to_thread(self._usage)
        state = "recording" if self.recorder is not None and self.capture else "armed" if self.armed else "idle"
        payload = {"state": state, "capture": self.capture, "kind": self.kind, "armed": self.armed,
                   "segments": segments, "used_bytes": used, "free_bytes": free}
        try:
            await self.hub.publish(self.hub.topic("camera"), json.dumps(payload, separators=(",", ":")), qos=1,
                                   retain=True)
        except (BrokerError, aiomqtt.MqttError) as exc:
            self.log.warning("camera state not published: %s", exc)

    def _usage(self) -> tuple[int, int, int]:
        segments = self.store.segments()
        return len(segments), sum(p.stat().st_size for p in segments), self.store.free_bytes()

    async def _enforce_quota(self) -> None:
        for gone in await asyncio.to_thread(self.store.enforce):
            if gone.uploaded:
                self.log.info("loop recording: deleted %s (uploaded)", gone.path.name)

    # -- the armed flag survives restarts -----------------------------------------------------------

    def _load_armed(self, default: bool) -> bool:
        try:
            return bool(json.loads((self.folder / STATE_FILE).read_text())["armed"])
        except (OSError, ValueError, KeyError, TypeError):
            return default

    def _save_armed(self) -> None:
        tmp = self.folder / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"armed": self.armed}))
        os.replace(tmp, self.folder / STATE_FILE)

    def stats(self) -> dict[str, float]:
        """CPU % of the recorder process since the last call, and its resident memory."""
        usage = self.recorder.usage() if self.recorder else {}
        if not usage:
            self._cpu = None
            return {}
        now = time.monotonic()
        out = {"rss": usage["rss"]}
        if self._cpu is not None and now > self._cpu[0]:
            out["cpu"] = 100.0 * (usage["cpu_seconds"] - self._cpu[1]) / (now - self._cpu[0])
        self._cpu = (now, usage["cpu_seconds"])
        return out
