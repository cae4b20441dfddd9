"""End to end with a real virtual node (pysmartnode on the MicroPython unix port) and the real component
library: the node boots, asks, takes its config from the server, loads it and acks; an edit of its file
makes it reconfigure while running; an invalid edit is refused and the node keeps the old config."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from config_server.pieces import parse_version
from config_server.server import ConfigServer, ServerOptions
from fleet import topics
from fleet.mqtt import BrokerSettings, FleetClient
from fleet.vnode import VirtualNode
from tests.nodeproto import ONE_RELAY_DEVICE as DEVICE

FAN = """    fan: {
      package: .machine.relay
      component: Relay
      constructor_args: {pin: 6, active_low: false}
    }
  }
}
"""


async def next_payload(client: FleetClient, topic: str, timeout: float = 20.0) -> bytes:
    async def first() -> bytes:
        async for msg in client.messages:
            if msg.topic.value == topic:
                return bytes(msg.payload)  # type: ignore[arg-type]
        raise AssertionError("message stream ended")

    return await asyncio.wait_for(first(), timeout)


async def next_json(client: FleetClient, topic: str, timeout: float = 20.0) -> dict:
    return json.loads(await next_payload(client, topic, timeout))


@pytest.mark.slow
async def test_virtual_node_takes_its_config_and_follows_edits(settings: BrokerSettings, tmp_path: Path) -> None:
    home = settings.home
    nid = f"cs{home[1:9]}"  # discovery topics are global: the id differs per test
    devices = tmp_path / "devices"
    devices.mkdir()
    device_file = devices / f"{nid}.hjson"
    device_file.write_text(DEVICE)
    options = ServerOptions(devices=devices, state=tmp_path / "state.sqlite", server_id="e2e", poll=0.1,
                            lease_ttl=1.5, flush_every=0.05)
    ack_topic = topics.config_ack(home, nid)
    async with ConfigServer(settings, options) as server, FleetClient(settings, "observer") as obs:
        await obs.subscribe(ack_topic)
        await obs.subscribe(topics.state(home, nid, "lamp"))
        v1 = server.registry.served[nid].v
        async with VirtualNode(tmp_path / "fs", nid, settings) as node:
            assert await next_json(obs, ack_topic) == {"v": v1, "state": "accepted"}
            assert await next_json(obs, ack_topic) == {"v": v1, "state": "applied", "failed": {}}
            await obs.publish(topics.command(home, nid, "lamp"), "ON", qos=1)
            while await next_payload(obs, topics.state(home, nid, "lamp")) != b"ON":
                pass  # the restored OFF first

            # An edit while it runs: pushed, accepted, applied after the node's restart.
            device_file.write_text(DEVICE.replace('_order: ["lamp"]', '_order: ["lamp", "fan"]')
                                   .replace("  }\n}\n", FAN, 1))
            accepted = await next_json(obs, ack_topic)
            v2 = server.registry.served[nid].v
            assert parse_version(v2)[0] == parse_version(v1)[0] + 1  # type: ignore[index]
            assert accepted == {"v": v2, "state": "accepted"}
            assert await next_json(obs, ack_topic) == {"v": v2, "state": "applied", "failed": {}}
            assert node.exits == [3, 3]  # each config applied by a restart of the VM, as on a board

            # An invalid edit: refused by the server with the exact error, never sent; the node keeps v2.
            device_file.write_text(device_file.read_text().replace("pin: 6", "pn: 6"))
            await asyncio.sleep(1.0)
            assert [str(i) for i in server.registry.checked[nid].issues] == [
                f"{device_file}:20:26: fan.constructor_args.pn: unknown argument (did you mean pin?)",
                f"{device_file}:20:7: fan.constructor_args: missing required argument pin"]
            assert server.registry.served[nid].v == v2
            with pytest.raises(TimeoutError):
                await next_json(obs, ack_topic, timeout=1.5)
            row = server.state.device(nid)
            assert row is not None and row["acked"] == v2 and row["ack_state"] == "applied"
