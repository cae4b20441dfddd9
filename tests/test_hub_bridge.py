"""The hub's own Mosquitto bridged to the home broker (two real Mosquitto processes): what the car
publishes while home is down arrives once home is back, commands come in, nothing loops."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from fleet.broker import Mosquitto
from fleet.mqtt import BrokerSettings
from hub import bridge, config
from tests.hub_helpers import Watch, running_hub

HUB = """
id: car
jobs: ["rules"]
local_broker: { enabled: true, port: 0 }
bridge: { restart: [1, 2], topics: ["{home}/garage/# in"] }
rules: {
  light: {
    on: { topic: "{home}/garage/door", payload: "open" }
    do: [ { publish: "{home}/garage/light/set", payload: "ON", reply: "{home}/garage/light" } ]
  }
}
"""


def test_bridge_config_names_every_topic_the_hub_needs(tmp_path: Path) -> None:
    cfg = config.loads(HUB)
    lines = bridge.bridge_lines(cfg, BrokerSettings("mqtts://car:secret@nas.lan:8883", "h", ca="/etc/ca.pem"))
    for line in ("address nas.lan:8883", "cleansession false", "remote_username car", "remote_password secret",
                 "bridge_cafile /etc/ca.pem", "notification_topic h/car/bridge", "topic h/car/# out 1",
                 "topic h/car/+/set in 1", "topic h/garage/door in 1", "topic h/garage/light/set out 1",
                 "topic h/garage/light in 1", "topic h/garage/# in 1", "restart_timeout 1 2"):
        assert line in lines, line
    path = tmp_path / "hub.hjson"
    path.write_text(HUB)
    out = subprocess.run([sys.executable, "-m", "fleet.cli", "hub", "bridge-config", "--config", str(path),
                          "--broker", "mqtt://nas:1883", "--home", "h"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "\ntopic h/garage/door in 1\n" in out.stdout, out.stderr


@pytest.mark.slow
async def test_messages_published_while_home_is_down_arrive_once_it_is_back(
        mosquitto_factory: Callable[..., Mosquitto], home: str, tmp_path: Path) -> None:
    home_broker = mosquitto_factory(persistence=True)
    settings = BrokerSettings(home_broker.url, home)
    # A subscriber at home with a persistent session (MQTT 3.1.1, clean session off), so that what the
    # bridge delivers while it is away waits for it at home.
    sub_id = f"sub-{uuid.uuid4().hex[:6]}"

    def subscriber() -> aiomqtt.Client:
        return aiomqtt.Client(home_broker.host, home_broker.port, identifier=sub_id, clean_session=False,
                              protocol=aiomqtt.ProtocolVersion.V311)

    async with subscriber() as sub:
        await sub.subscribe(f"{home}/car/data/#", qos=1)
    async with Watch(settings, f"{home}/car/#", f"{home}/garage/#") as w, \
            running_hub(HUB, settings, tmp_path) as hub:
        assert hub.local is not None
        await w.wait(lambda s: s.topic == f"{home}/car/bridge" and s.payload == "1", what="bridge up")
        local = BrokerSettings(hub.local.url, home)
        async with Watch(local, f"{home}/car/#", f"{home}/garage/#") as lw:
            # A command from home comes in once, and does not loop back home.
            await w.publish(f"{home}/car/thing/set", "ON")
            await lw.wait(lambda s: s.topic == f"{home}/car/thing/set", what="command at the car")
            # A rule reacts to a fleet event from home and drives a node at home.
            await w.publish(f"{home}/garage/door", "open")
            await w.wait(lambda s: s.topic == f"{home}/garage/light/set", what="the rule's action at home")
            await w.publish(f"{home}/garage/light", "ON")
            await lw.wait(lambda s: s.topic == f"{home}/car/rules/light" and s.json()["event"] == "finished"
                          and s.json()["result"] == "ok", what="rule finished with the reply from home")
            await asyncio.sleep(0.5)
            assert len(w.on(f"{home}/car/thing/set")) == 1 and len(lw.on(f"{home}/car/thing/set")) == 1
            assert len(w.on(f"{home}/garage/light/set")) == 1 and len(lw.on(f"{home}/garage/door")) == 1
            # The action went home and, although home's garage/# is bridged in, did not come back.
            assert len(lw.on(f"{home}/garage/light/set")) == 1

            home_broker.stop()
            await lw.wait(lambda s: s.topic == f"{home}/car/bridge" and s.payload == "0", what="bridge down")
            for n in range(50):  # the car goes on: its job publishes while home is out of reach
                await hub.publish(f"{home}/car/data/{n}", str(n), qos=1)
            await asyncio.sleep(0.5)
            home_broker.start()
            await lw.wait(lambda s: s.topic == f"{home}/car/bridge" and s.payload == "1", timeout=20,
                          what="bridge up again")
        got: list[str] = []
        async with subscriber() as sub:
            async def collect() -> None:
                async for msg in sub.messages:
                    got.append(msg.topic.value)
                    if len(got) == 50:
                        return

            await asyncio.wait_for(collect(), 15)
            await asyncio.sleep(0.5)
        assert sorted(got, key=lambda t: int(t.rsplit("/", 1)[1])) == [f"{home}/car/data/{n}" for n in range(50)]
