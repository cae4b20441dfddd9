"""The node runtime on the real MicroPython VM (unix port) against a real Mosquitto: commands, virtual
hardware, discovery, error boundaries, logs, device commands."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleet.mqtt import BrokerSettings
from tests.nodeproto import (  # noqa: F401  (the nid and start_node fixtures)
    Observer,
    StartNode,
    node_id,
    node_starter,
    relay_config,
)


async def test_set_drives_virtual_relay_and_state_comes_back(start_node: StartNode, settings: BrokerSettings) -> None:
    h, i = settings.home, f"n{settings.home[1:9]}"
    async with Observer(settings) as obs:
        # a retained /set (here before the node boots) is ignored: a command is an event, not a state
        await obs.publish(f"{h}/{i}/relay1/set", "ON", retain=True)
        await start_node({"components.json": relay_config("relay1")})
        await obs.wait(f"{h}/_sim/{i}/pin5/level", lambda p: p == b"0")
        await obs.wait(f"{h}/{i}/info")  # sent once subscribed: commands are heard from here on
        await obs.publish(f"{h}/{i}/relay1/set", b"", retain=True)
        m = obs.mark()
        await obs.publish(f"{h}/{i}/cmd/set", "info")
        await obs.wait(f"{h}/{i}/info", start=m)
        assert not [x for x in obs.msgs if x[0] == f"{h}/{i}/relay1"]
        m = obs.mark()
        await obs.publish(f"{h}/{i}/relay1/set", "ON")
        assert await obs.wait(f"{h}/{i}/relay1", start=m) == b"ON"
        await obs.wait(f"{h}/_sim/{i}/pin5/level", lambda p: p == b"1", start=m)
        # a malformed command is logged with its topic and dropped; the node keeps serving
        m = obs.mark()
        await obs.publish(f"{h}/{i}/relay1/set", "BLINK")
        line = await obs.wait(f"{h}/log/error/{i}", start=m)
        assert f"{h}/{i}/relay1/set".encode() in line and b"expected ON, OFF or TOGGLE" in line
        await obs.publish(f"{h}/{i}/relay1/set", "TOGGLE")
        assert await obs.wait(f"{h}/{i}/relay1", start=m) == b"OFF"
        assert not [t for t, _, _ in obs.msgs if t.startswith(f"{h}/log/debug/")]  # DEBUG is off


async def test_state_restored_from_retained_topic_on_boot(start_node: StartNode, settings: BrokerSettings) -> None:
    h, i = settings.home, f"n{settings.home[1:9]}"
    async with Observer(settings) as obs:
        await obs.publish(f"{h}/{i}/relay1", "ON", retain=True)
        await start_node({"components.json": relay_config("relay1")})
        await obs.wait(f"{h}/_sim/{i}/pin5/level", lambda p: p == b"1", timeout=15)


async def test_failing_components_leave_the_others_running(start_node: StartNode, settings: BrokerSettings) -> None:
    h, i = settings.home, f"n{settings.home[1:9]}"
    cfg = {"_order": ["bad", "ghost", "crashy", "relay1", "dep"],
           "bad": {"package": "parts", "component": "Boom"},
           "dep": {"package": "parts", "component": "Thermo", "constructor_args": {"i2c": "bad"}},
           "ghost": {"package": ".no_such_module", "component": "X"},
           "crashy": {"package": "parts", "component": "Crashy"},
           "relay1": {"package": "parts", "component": "Relay", "constructor_args": {"pin": 5}}}
    async with Observer(settings) as obs:
        vn = await start_node({"local_components.py": f"COMPONENTS = {json.dumps(cfg)}\n"})
        info = await obs.wait_json(f"{h}/{i}/info", lambda d: "relay1" in d["components"])
        assert info["failed"]["bad"] == "RuntimeError: boom in constructor"
        assert "ImportError" in info["failed"]["ghost"]
        assert info["failed"]["dep"] == "ValueError: needs bad, which did not load"
        assert set(info["components"]) == {"crashy", "relay1"}
        assert info["components"]["relay1"] == "1.2.0"
        await obs.wait(f"{h}/log/error/{i}", lambda p: b"crashy: crashed" in p and b"boom in loop" in p)
        m = obs.mark()
        await obs.publish(f"{h}/{i}/relay1/set", "ON")
        assert await obs.wait(f"{h}/{i}/relay1", start=m) == b"ON"
        assert vn.boots == 1


async def test_discovery_payloads_carry_required_keys(start_node: StartNode, settings: BrokerSettings) -> None:
    h, i = settings.home, f"n{settings.home[1:9]}"
    cfg = {"_order": ["i2c", "thermo", "relay1", "probe"],
           "i2c": {"package": "pysmartnode.hw", "component": "i2c", "constructor_args": {"scl": 5, "sda": 4}},
           "thermo": {"package": "parts", "component": "Thermo",
                      "constructor_args": {"i2c": "i2c", "interval": 1, "offset": {"temperature": -0.5},
                                           "precision": {"humidity": 0}}},
           "relay1": {"package": "parts", "component": "Relay", "constructor_args": {"pin": 12}},
           "probe": {"package": "parts", "component": "probe", "constructor_args": ["thermo"]}}
    board = {"models": [{"model": "thermochip", "module": "parts", "bus": "i2c", "address": "0x44",
                         "temperature": 21.5}]}
    async with Observer(settings) as obs:
        await start_node({"components.json": cfg, "board.json": board})
        sw = await obs.wait_json(f"homeassistant/switch/{i}/relay1/config")
        t = await obs.wait_json(f"homeassistant/sensor/{i}/thermo_temperature/config")
        hum = await obs.wait_json(f"homeassistant/sensor/{i}/thermo_humidity/config")
        for d in (sw, t, hum):
            for key in ("name", "unique_id", "state_topic", "availability_topic", "device"):
                assert key in d, (key, d)
            assert d["availability_topic"] == f"{h}/{i}/status"
            assert (d["payload_available"], d["payload_not_available"]) == ("online", "offline")
            assert d["device"]["identifiers"] == [f"smartfleet_{i}"]
            assert d["device"]["manufacturer"] == "SmartFleet"
            assert d["device"]["sw_version"] and d["device"]["model"]
        assert sw["command_topic"] == f"{h}/{i}/relay1/set" and sw["unique_id"] == f"{i}_relay1"
        assert t["value_template"] == "{{ value_json.temperature }}"
        assert (t["unit_of_measurement"], t["device_class"]) == ("°C", "temperature")
        assert hum["unique_id"] == f"{i}_thermo_humidity"
        # the reading, then a failing chip: an error logged, nothing published, then back
        reading = await obs.wait_json(f"{h}/{i}/thermo")
        assert reading == {"temperature": 21.0, "humidity": 50}  # offset -0.5; humidity to 0 decimals
        await obs.wait(f"{h}/log/info/{i}", lambda p: p.endswith(b"probe: temperature 21.0"))
        await obs.publish(f"{h}/_sim/{i}/thermochip-0x44/set", json.dumps({"fail": "nack", "temperature": 30}))
        m = obs.mark()
        await obs.wait(f"{h}/log/error/{i}", lambda p: b"thermo: read failed: OSError" in p, start=m)
        m = obs.mark()
        await obs.wait(f"{h}/log/error/{i}", lambda p: b"thermo: read failed" in p, start=m)
        assert not [x for x in obs.msgs[m:] if x[0] == f"{h}/{i}/thermo"]
        await obs.wait(f"{h}/log/info/{i}", lambda p: p.endswith(b"probe: temperature None"), start=m)
        await obs.publish(f"{h}/_sim/{i}/thermochip-0x44/set", json.dumps({"fail": None}))
        assert (await obs.wait_json(f"{h}/{i}/thermo", start=m))["temperature"] == 29.5
        # HA comes back online: discovery is sent again
        m = obs.mark()
        await obs.publish("homeassistant/status", "online")
        await obs.wait(f"homeassistant/switch/{i}/relay1/config", start=m)
        # a malformed sim input is logged with its topic, dropped
        await obs.publish(f"{h}/_sim/{i}/thermochip-0x44/set", "{not json")
        await obs.wait(f"{h}/log/error/{i}", lambda p: b"thermochip-0x44/set" in p, start=m)
        for obj in (f"switch/{i}/relay1", f"sensor/{i}/thermo_temperature", f"sensor/{i}/thermo_humidity"):
            await obs.publish(f"homeassistant/{obj}/config", b"", retain=True)


async def test_restart_command_boots_again(start_node: StartNode, settings: BrokerSettings) -> None:
    h, i = settings.home, f"n{settings.home[1:9]}"
    async with Observer(settings) as obs:
        vn = await start_node({"components.json": relay_config("relay1")})
        await obs.wait(f"{h}/{i}/info")  # sent once subscribed: commands are heard from here on
        m = obs.mark()
        await obs.publish(f"{h}/{i}/cmd/set", "restart")
        await obs.wait(f"{h}/{i}/status", lambda p: p == b"offline", start=m)
        await obs.wait(f"{h}/{i}/info", start=m)
        assert vn.boots == 2 and vn.exits == [3]
        # a bad command is logged, not fatal
        await obs.publish(f"{h}/{i}/cmd/set", "explode")
        await obs.wait(f"{h}/log/error/{i}", lambda p: b"unknown command 'explode'" in p, start=m)


@pytest.mark.slow
async def test_logs_buffered_offline_arrive_on_reconnect(start_node: StartNode, tmp_path: Path,
                                                         mosquitto_factory: Callable[..., Any], home: str) -> None:
    broker = mosquitto_factory()
    s = BrokerSettings(broker.url, home)
    cfg = {"_order": ["tick"], "tick": {"package": "parts", "component": "ticker",
                                         "constructor_args": {"name": "tick", "every": 0.4}}}
    vn = await start_node({"components.json": cfg, "config.py": "LOG_BUFFER = 8\n"}, broker=s)
    await vn.wait_for("tick 2")
    broker.stop()
    first = int((await vn.wait_for(r"tick (\d+)", start=vn.mark()))[1])  # logged offline
    await vn.wait_for(f"tick {first + 9}")  # more lines than the buffer holds
    # start the broker just after a failed attempt: the node's next one is >= 750 ms away, time enough
    # for the observer to subscribe before the buffered lines go out
    await vn.wait_for(r"reconnecting in ([89]\d\d|\d{4,}) ms", start=vn.mark(), timeout=30)
    broker.start()
    async with Observer(s, f"{home}/log/#") as obs:
        await obs.wait(f"{home}/log/info/{vn.id}", lambda p: b"mqtt: connected" in p, timeout=30)
        lines = [p for _, p, _ in obs.msgs]
        dropped = next(p for p in lines if b"lines dropped while offline" in p)
        assert int(re.search(rb"log: (\d+) lines dropped", dropped)[1]) >= 2
        # the lines logged while offline came first, oldest dropped, the newest 8 kept, in order
        before = [int(p.rsplit(b" ", 1)[1]) for p in lines[:lines.index(next(p for p in lines if b"connected" in p))]
                  if b"tick: tick" in p]
        assert len(before) >= 5 and before == sorted(before) and min(before) > first, before
        assert lines[1][:4].isdigit() and lines[1][4:5] == b"-"  # ISO time first


async def test_loader_extras_and_debug_lines(start_node: StartNode, settings: BrokerSettings) -> None:
    h, i = settings.home, f"n{settings.home[1:9]}"
    cfg = {"_order": ["count"],
           "count": {"package": "parts", "component": "Counter", "init_function": "begin", "init_args": [40],
                     "call_function_regularly": "bump", "call_interval": 0.3}}
    async with Observer(settings) as obs:
        await start_node({"components.json": cfg, "config.py": "DEBUG = True\nINFO_INTERVAL = 1\n"})
        await obs.wait(f"{h}/{i}/count", lambda p: p == b"41")
        await obs.wait(f"{h}/{i}/count", lambda p: p == b"43")
        await obs.wait(f"{h}/log/debug/{i}", lambda p: p.endswith(b"loader: loaded count"))
        m = obs.mark()  # info is republished every INFO_INTERVAL
        await obs.wait(f"{h}/{i}/info", start=m, timeout=5)
        await obs.wait(f"{h}/{i}/info", start=obs.mark(), timeout=5)
