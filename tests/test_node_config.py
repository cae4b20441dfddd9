"""Where a node's config comes from (docs/NODE.md): the local sources, and the config server's exchange
(docs/PROTOCOL.md section 4) spoken by tests/nodeproto.py: applied by restart and acked, refused and kept,
failing components reported, removed components' discovery cleared, signed configs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from fleet.mqtt import BrokerSettings
from tests.nodeproto import (  # noqa: F401  (the nid and start_node fixtures)
    Observer,
    StartNode,
    compile_mpy,
    node_id,
    node_starter,
    pieces,
    relay_config,
)


@pytest.mark.parametrize("source", ["components.json", "components.d", "local_components.py", "code", "config"])
async def test_each_local_source(source: str, start_node: StartNode, settings: BrokerSettings, nid: str) -> None:
    h = settings.home
    cfg = relay_config("relay1", "relay2")
    files: dict[str, Any] = {}
    if source == "components.json":
        files["components.json"] = cfg
    elif source == "components.d":
        files = {"components.d/_order.json": ["relay2", "relay1"], "components.d/relay1.json": cfg["relay1"],
                 "components.d/relay2.json": cfg["relay2"]}
    elif source == "local_components.py":
        files["local_components.py"] = f"COMPONENTS = {json.dumps(cfg)}\n"
    elif source == "code":  # code that builds its components itself
        files["local_components.py"] = "import parts\nparts.Relay('relay1', 5)\nparts.Relay('relay2', 6)\n"
    else:  # the last config received from the server
        v, _ = pieces(cfg, 4)
        files = {"config.cur/_version": v, "config.cur/_settings.json": {}, "config.cur/_order.json": cfg["_order"],
                 "config.cur/relay1.json": cfg["relay1"], "config.cur/relay2.json": cfg["relay2"],
                 "components.json": relay_config("other")}  # the server's config wins over the local file
    async with Observer(settings) as obs:
        vn = await start_node(files)
        await obs.wait(f"{h}/{nid}/info")
        shown = {"code": "local_components.py", "config": "config.cur"}.get(source, source)
        await vn.wait_for(f"config from {shown}")
        await obs.publish(f"{h}/{nid}/relay2/set", "ON")
        assert await obs.wait(f"{h}/{nid}/relay2") == b"ON"
        await obs.wait(f"{h}/_sim/{nid}/pin6/level", lambda p: p == b"1")
        if source == "config":
            req = await obs.wait_json(f"{h}/config/request/{nid}")
            assert req["v"] == v and req["platform"] == "unix" and req["max"] == 1024


async def test_broken_local_file_named_with_position(start_node: StartNode, settings: BrokerSettings,
                                                     nid: str) -> None:
    h = settings.home
    cfg = relay_config("relay1")
    broken = '{"_order": ["relay1"],\n "relay1": {"package": parts, "component": "Relay"}}\n'
    files = {"components.json": broken, "components.d/relay1.json": cfg["relay1"],
             "components.d/relay2.json": {"package": "parts"}}
    async with Observer(settings) as obs:
        vn = await start_node(files)
        line = await obs.wait(f"{h}/log/error/{nid}", lambda p: b"components.json" in p)
        assert line.endswith(b"config components.json not used: components.json:2:24: unexpected 'p'")
        await vn.wait_for("config from components.d")
        info = await obs.wait_json(f"{h}/{nid}/info")
        assert info["components"] == {"relay1": "1.2.0"}
        assert info["failed"] == {"relay2": "ValueError: component: required, a string"}


async def test_server_config_applied_by_restart_and_acked(start_node: StartNode, settings: BrokerSettings,
                                                          nid: str) -> None:
    h = settings.home
    async with Observer(settings) as obs:
        vn = await start_node({})
        req = await obs.wait_json(f"{h}/config/request/{nid}")
        assert req == {"v": None, "platform": "unix", "max": 1024, "fw": "0.1.0"}
        await vn.wait_for("no local config: waiting for the config server")
        # bodies split over several pieces (max 300 bytes), relay2 fails to construct
        cfg = relay_config("relay1", "relay2", "relay3")
        cfg["relay2"]["constructor_args"] = {"pin": 6, "colour": "red"}
        cfg["relay3"]["constructor_args"]["friendly_name"] = "x" * 400
        v, ps = pieces(cfg, 7, max_len=300, settings={"interval": 3})
        assert len(ps) > 5  # five bodies: relay3's is split
        for p in ps:
            await obs.publish(f"{h}/{nid}/config", p)
        ack = await obs.wait_json(f"{h}/config/ack/{nid}")
        assert ack == {"v": v, "state": "accepted"}
        applied = await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d["state"] == "applied")
        assert applied["v"] == v and set(applied["failed"]) == {"relay2"}
        assert "colour" in applied["failed"]["relay2"]
        info = await obs.wait_json(f"{h}/{nid}/info", lambda d: d["config"] == v)
        assert set(info["components"]) == {"relay1", "relay3"}
        assert vn.exits == [3]
        await obs.publish(f"{h}/{nid}/relay1/set", "ON")
        await obs.wait(f"{h}/{nid}/relay1", lambda p: p == b"ON")
        # the node asks again after the reconnect and hears `unchanged`
        req = await obs.wait_json(f"{h}/config/request/{nid}", lambda d: d["v"] == v)
        await obs.publish(f"{h}/{nid}/config", json.dumps({"v": v, "unchanged": True}))

        # a new config without relay3: applied, and relay3's discovery removed with an empty payload
        m = obs.mark()
        v2 = await obs.send_config(nid, relay_config("relay1"), 8)
        await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d == {"v": v2, "state": "accepted"}, start=m)
        await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d == {"v": v2, "state": "applied", "failed": {}},
                            start=m)
        await obs.wait(f"homeassistant/switch/{nid}/relay3/config", lambda p: p == b"", start=m)

        # broken configs are refused and the one in force stays
        m = obs.mark()
        bad = relay_config("relay1", "oled")
        bad["oled"] = {"package": ".ssd1306_missing", "component": "OLED"}
        v3 = await obs.send_config(nid, bad, 9)
        ack = await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d["v"] == v3, start=m)
        assert ack["state"] == "refused" and "oled" in ack["errors"][0] and "ImportError" in ack["errors"][0]
        v4 = await obs.send_config(nid, {"_order": ["relay1", "set"], "relay1": {"package": "parts"}, "set": {}}, 10)
        ack = await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d["v"] == v4, start=m)
        errors = " ".join(ack["errors"])
        assert ack["state"] == "refused" and "component: required" in errors and "'set'" in errors
        v5, ps = pieces(relay_config("relay1", "relay2"), 11)
        for p in ps:  # a version whose hash is not the config's
            await obs.publish(f"{h}/{nid}/config", p.replace(v5.encode(), b"11-0badc0de"))
        ack = await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d["v"] == "11-0badc0de", start=m)
        assert ack["state"] == "refused" and "hash" in ack["errors"][0]
        await obs.publish(f"{h}/{nid}/cmd/set", "info")
        info = await obs.wait_json(f"{h}/{nid}/info", lambda d: d["config"] == v2, start=m)
        assert vn.exits == [3, 3]
        assert not (vn.fs / "config.new").exists()
        assert json.loads((vn.fs / "config.cur" / "_order.json").read_text()) == ["relay1"]

        # reconfig: the node asks again with the version in force
        m = obs.mark()
        await obs.publish(f"{h}/{nid}/cmd/set", "reconfig")
        assert (await obs.wait_json(f"{h}/config/request/{nid}", start=m))["v"] == v2


async def test_broken_sets_abandoned_and_asked_again(start_node: StartNode, settings: BrokerSettings,
                                                     nid: str) -> None:
    h = settings.home
    async with Observer(settings) as obs:
        vn = await start_node({"components.json": relay_config("relay1")})
        await obs.wait(f"{h}/{nid}/info")
        t0 = time.monotonic()
        m = obs.mark()
        v, ps = pieces(relay_config("relay1", "relay2"), 3)
        await obs.publish(f"{h}/{nid}/config", ps[0])
        await obs.publish(f"{h}/{nid}/config", ps[2])  # piece 1 lost
        await vn.wait_for("out of order")
        await obs.wait(f"{h}/config/request/{nid}", start=m)
        # garbage on the config topic is logged with its topic and dropped
        await obs.publish(f"{h}/{nid}/config", b"\xff\xfenot json")
        await obs.wait(f"{h}/log/error/{nid}", lambda p: f"{h}/{nid}/config".encode() in p, start=m)
        # unanswered: asked again after about 5 s (with jitter)
        m = obs.mark()
        await obs.wait(f"{h}/config/request/{nid}", start=m, timeout=10)
        assert 3.5 < time.monotonic() - t0 < 9
        for p in ps:
            await obs.publish(f"{h}/{nid}/config", p)
        await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d["state"] == "applied" and d["v"] == v)


async def test_signed_configs(start_node: StartNode, settings: BrokerSettings, nid: str) -> None:
    h = settings.home
    key = b"k3y-for-this-device"
    async with Observer(settings) as obs:
        vn = await start_node({"config.py": f"CONFIG_KEY = {key!r}\n", "components.json": relay_config("relay1")})
        await obs.wait(f"{h}/{nid}/info")
        m = obs.mark()
        v = await obs.send_config(nid, relay_config("relay1", "relay2"), 5)  # unsigned
        ack = await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d["v"] == v, start=m)
        assert ack["state"] == "refused" and "not signed" in ack["errors"][0]
        m = obs.mark()
        v = await obs.send_config(nid, relay_config("relay1", "relay2"), 5, key=b"wrong")
        ack = await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d["v"] == v, start=m)
        assert ack["state"] == "refused" and "signature does not match" in ack["errors"]
        m = obs.mark()
        v = await obs.send_config(nid, relay_config("relay1", "relay2"), 5, key=key)
        await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d == {"v": v, "state": "accepted"}, start=m)
        await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d["state"] == "applied", start=m)
        m = obs.mark()
        old = await obs.send_config(nid, relay_config("relay1"), 4, key=key)  # a replay of an older one
        ack = await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d["v"] == old, start=m)
        assert ack["state"] == "refused" and "replay" in ack["errors"][0], vn.output


async def test_twenty_components_in_a_small_heap(start_node: StartNode, settings: BrokerSettings, nid: str,
                                                  tmp_path: Path) -> None:
    h = settings.home
    names = [f"relay{i}" for i in range(20)]
    async with Observer(settings) as obs:
        compile_mpy(tmp_path / nid)
        vn = await start_node({}, heap="144K")  # x64: pointers twice an ESP8266's; code on the heap
        await obs.wait(f"{h}/config/request/{nid}")
        v = await obs.send_config(nid, relay_config(*names, pin0=10), 11)
        try:
            applied = await obs.wait_json(f"{h}/config/ack/{nid}", lambda d: d["state"] == "applied", timeout=20)
        except AssertionError:
            raise AssertionError(vn.output) from None
        assert applied == {"v": v, "state": "applied", "failed": {}}
        info = await obs.wait_json(f"{h}/{nid}/info", lambda d: d["config"] == v)
        assert len(info["components"]) == 20
        assert "MemoryError" not in vn.output, vn.output


@pytest.mark.slow
async def test_a_gap_abandons_the_set(start_node: StartNode, settings: BrokerSettings, nid: str) -> None:
    h = settings.home
    async with Observer(settings) as obs:
        vn = await start_node({"components.json": relay_config("relay1")})
        await obs.wait(f"{h}/{nid}/info")
        _, ps = pieces(relay_config("relay1", "relay2"), 3)
        await obs.publish(f"{h}/{nid}/config", ps[0])
        t0 = time.monotonic()
        m = obs.mark()
        await vn.wait_for(r"abandoned after 1 of 4 pieces \(no piece for 10 s\)", timeout=20)
        assert 9 < time.monotonic() - t0 < 15
        assert (await obs.wait_json(f"{h}/config/request/{nid}", start=m))["v"] is None
        assert not (vn.fs / "config.new").exists()
