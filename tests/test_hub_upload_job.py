"""The upload job inside the real hub service over a real Mosquitto: segment announcements in, verified
uploads and `upload/done` out, progress on `<home>/<hub>/upload`, malformed payloads dropped, files left
on disk by a hub that was down found at start, `fleet hub upload status --once`, and hub.hjson checks."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from hub_helpers import Watch, running_hub
from sftpserver import SftpServer

from fleet.errors import ConfigError
from fleet.mqtt import BrokerSettings
from hub import config
from hub.upload.transfer import sha256_of

HUB = "car"
ROOT = Path(__file__).resolve().parents[1]


def text(workdir: Path, target: dict[str, object]) -> str:
    return json.dumps({"id": HUB, "workdir": str(workdir), "jobs": ["upload"],
                       "upload": {"targets": {"nas": target}, "progress": 0.2}})


async def test_segments_announced_are_uploaded_and_reported(settings: BrokerSettings, home: str,
                                                            tmp_path: Path) -> None:
    server = await SftpServer(tmp_path / "nas").start()
    workdir = tmp_path / "hub"
    cam = workdir / "camera"
    cam.mkdir(parents=True)
    early = cam / "loop.20261121T050000Z.b1.0.mp4"  # closed while the hub was down: found by the scan
    early.write_bytes(os.urandom(50_000))
    try:
        async with Watch(settings, f"{home}/{HUB}/#", f"{home}/log/#") as w, \
                running_hub(text(workdir, server.target_config()), settings, workdir):
            segs = []
            for i in (1, 2):
                seg = cam / f"loop.20261121T050000Z.b1.{i}.mp4"
                seg.write_bytes(os.urandom(400_000 * i))
                segs.append(seg)
                await w.publish(f"{home}/{HUB}/camera/segment", json.dumps(
                    {"path": str(seg), "capture": "20261121T050000Z", "seq": i, "duration": 1.0,
                     "size": seg.stat().st_size, "sha256": sha256_of(seg)}))
            await w.publish(f"{home}/{HUB}/camera/segment", "{not json")
            await w.publish(f"{home}/{HUB}/upload/set", json.dumps({"add": "/no/such/file"}))
            await w.wait(lambda s: len(w.on(f"{home}/{HUB}/upload/done")) == 3, 20, "three files done")
            status = await w.wait(lambda s: s.topic == f"{home}/{HUB}/upload" and s.json()["queued"] == 0
                                  and s.json()["done"] == 3, 10, "the queue empty in the progress")
            cli = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fleet.cli", "hub", "upload", "status", "--hub", HUB, "--once",
                "--broker", settings.url, "--home", home, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(cli.communicate(), 20)
            logs = [s.payload for s in w.seen if s.topic.startswith(f"{home}/log/")]
    finally:
        await server.close()
    done = {d.json()["path"]: d.json() for d in w.on(f"{home}/{HUB}/upload/done")}
    assert set(done) == {str(p) for p in (early, *segs)}
    assert all(d["verified"] == {"nas": "sha256"} for d in done.values())
    for p in (early, *segs):
        assert (server.root / HUB / p.name).read_bytes() == p.read_bytes()
    assert status.retain is False or status.json()["reachable"] == {"nas": True}
    assert sum("dropped a malformed message" in line for line in logs) == 2
    assert cli.returncode == 0 and "queued 0" in out.decode() and "nas up" in out.decode()


def test_hub_hjson_upload_and_power_problems_have_positions() -> None:
    bad = """{
  id: car
  jobs: ["upload", "power"]
  upload: {
    targets: {
      nas: { type: "sftp", host: "nas.local", user: "car", key: "/k", knwon_hosts: "/kh" }
      web: { type: "ftp" }
    }
    retry: { first: -1 }
  }
  power: { latch_pin: 17, deadline: "soon" }
}"""
    with pytest.raises(ConfigError) as err:
        config.loads(bad, "hub.hjson")
    text = str(err.value)
    assert "hub.hjson:6:71: upload.targets.nas.knwon_hosts: unknown key for an sftp target (did you mean " \
           "known_hosts?)" in text
    assert "upload.targets.nas: missing 'known_hosts'" in text
    assert "hub.hjson:7:" in text and "type must be one of sftp, https, not 'ftp'" in text
    assert "upload.retry: expected {first: seconds, max: seconds}" in text
    assert "power.deadline: expected seconds ≥ 0" in text
    assert "power.latch_pin: the latch and the ignition need pins of their own" in text
