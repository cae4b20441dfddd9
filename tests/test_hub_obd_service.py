"""The OBD job inside the real hub service (hub/service.py), from hub.hjson text, against Mosquitto and
the ELM327 emulator: values, the API with MQTT 5 correlation, HA discovery with the hub's device block,
the job's log lines on MQTT, and a killed adapter worker restarted by the service."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.mqtt import BrokerSettings
from tests.elm import Emulator
from tests.hub_helpers import Watch, running_hub


@pytest.fixture
def elm(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(tmp_path / "elm") as emulator:
        yield emulator


def hub_text(elm: Emulator) -> str:
    return f"""{{
  id: car
  jobs: ["obd"]
  restart: {{ min: 0.5, max: 2 }}
  obd: {{
    port: "{elm.url}"
    baudrate: 38400
    protocol: "6"
    watch: {{ RPM: 10 }}
    retry: [0.5, 1]
  }}
}}
"""


async def test_obd_job_in_the_hub_service(settings: BrokerSettings, tmp_path: Path, elm: Emulator) -> None:
    home = settings.home
    obd = f"{home}/car/obd"
    async with Watch(settings, f"{home}/car/#", f"{home}/log/#", "homeassistant/sensor/car/#",
                     f"{home}/me/reply") as w, running_hub(hub_text(elm), settings, tmp_path) as hub:
        await w.wait(lambda s: s.topic == f"{obd}/status" and s.payload == "connected", 20, "connected")
        rpm = await w.wait(lambda s: s.topic == f"{obd}/RPM", what="RPM")
        assert rpm.json()["unit"] == "revolutions_per_minute"
        await w.wait(lambda s: s.topic == f"{home}/log/info/car" and "obd: status: connected" in s.payload,
                     what="the job's log line on MQTT")
        # Discovery topics have no <home>: other tests' retained ones may come first.
        entity = await w.wait(lambda s: s.topic == "homeassistant/sensor/car/obd_rpm/config"
                              and s.json()["state_topic"] == f"{obd}/RPM", what="discovery")
        assert entity.json()["unique_id"] == "car_obd_rpm"
        assert entity.json()["availability_topic"] == f"{home}/car/status"

        # The API through the service's connection, MQTT 5 response topic and correlation data.
        assert w.client is not None
        await w.client.publish(f"{obd}/api/query", json.dumps({"command": "SPEED", "id": "q"}), qos=1,
                               response_topic=f"{home}/me/reply", correlation=b"\x01corr")
        reply = await w.wait(lambda s: s.topic == f"{home}/me/reply", what="reply")
        assert reply.json()["ok"] and reply.json()["result"]["unit"] == "kilometer_per_hour"

        # The adapter worker dies: the job fails, the service restarts it, values come again.
        job = hub.job("obd")
        assert job is not None
        worker = job.worker._proc  # type: ignore[attr-defined]
        assert worker is not None
        os.kill(worker.pid, signal.SIGKILL)
        await w.wait(lambda s: s.topic == f"{home}/car/jobs" and s.json()["obd"]["restarts"] >= 1
                     and "adapter worker" in (s.json()["obd"]["error"] or ""), what="restart reported")
        seen = len(w.seen)
        await w.wait(lambda s: s.topic == f"{obd}/status" and s.payload == "connected"
                     and w.seen.index(s) >= seen, 20, "connected again")
        await w.wait(lambda s: s.topic == f"{obd}/RPM" and w.seen.index(s) >= seen, what="values again")
