"""The component library on virtual nodes: the real node code and the real drivers on the MicroPython unix
port, chip models on the virtual buses, a real Mosquitto.

Two nodes per run (module fixtures, so the suite stays quick): `full` loads every component against
healthy models; `faulty` loads sensors whose models a test makes fail, plus components whose config is
wrong, to show the error paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from fleet.broker import Mosquitto
from fleet.mqtt import BrokerSettings, FleetClient
from fleet.vnode import VirtualNode
from tests.nodeproto import Observer, make_fs

pytestmark = pytest.mark.asyncio(loop_scope="module")

BOARD = {"models": [
    {"model": "htu21d", "bus": "i2c", "address": "0x40", "temperature": 22.5, "humidity": 40},
    {"model": "bme280", "bus": "i2c", "address": "0x76", "temperature": 18.0, "humidity": 55, "pressure": 990.5},
    {"model": "ds18b20", "bus": "onewire", "pin": 13, "rom": "28ff4a1c33160456", "temperature": -3.25},
    {"model": "dht22", "bus": "dht", "pin": 4, "temperature": -1.5, "humidity": 80},
]}


def spec(package: str, component: str, **args: Any) -> dict[str, Any]:
    return {"package": package, "component": component, "constructor_args": args}


FULL = {
    "i2c": spec(".machine.i2c", "I2C", pin_scl=5, pin_sda=4),
    "htu": spec(".sensors.htu21d", "HTU21D", i2c="i2c", precision={"temperature": 1, "humidity": 0}),
    "bme": spec(".sensors.bme280", "BME280", i2c="i2c", precision=2),
    "ow": spec(".machine.onewire", "OneWire", pin=13),
    "water": spec(".sensors.ds18b20", "DS18B20", onewire="ow", precision=2),
    "porch": spec(".sensors.dht22", "DHT22", pin=4, interval=2),
    "ram": spec(".machine.ram", "RAM"),
    "stats": spec(".machine.stats", "Stats", interval=2),
    "heater": spec(".machine.relay", "Relay", pin=14),
    "lamp": spec(".machine.switch", "Switch", pin=12),
    "btn": spec(".machine.button", "Button", pin=0, long_press=600),
    "led": spec(".machine.led", "LED", pin=2),
    "strip": spec(".machine.pwm", "PWM", pin=15, gamma=1),
    "bat": spec(".machine.adc", "ADC", pin=34, scale=6.6, unit="V", device_class="voltage", precision=2),
    "avg": spec(".machine.adc", "ADC", pin=35, scale=100, window=3),
    "dlt": spec(".machine.adc", "ADC", pin=36, scale=100, delta=5, throttle=1, interval=0.2, publish_interval=60),
    "buzzer": spec(".devices.buzzer", "Buzzer", pin=25),
    "thermo": spec(".devices.thermostat", "Thermostat", sensor="bme", switch="heater", interval=0.5,
                   hysteresis=0.5),
    # any sensor, any switch: a DS18B20 and a plain GPIO switch
    "pump": spec(".machine.switch", "Switch", pin=26, restore=False),
    "aqua": spec(".devices.thermostat", "Thermostat", sensor="water", switch="pump", target=24, interval=0.5),
}

FAULTY = {
    "i2c": spec(".machine.i2c", "I2C"),
    "htu": spec(".sensors.htu21d", "HTU21D", i2c="i2c"),
    "bme": spec(".sensors.bme280", "BME280", i2c="i2c"),
    "ow": spec(".machine.onewire", "OneWire", pin=13),
    "water": spec(".sensors.ds18b20", "DS18B20", onewire="ow"),
    "porch": spec(".sensors.dht22", "DHT22", pin=4, interval=2),
    "cooler": spec(".machine.relay", "Relay", pin=14, restore=False),
    "guard": spec(".devices.thermostat", "Thermostat", sensor="bme", switch="cooler", mode="cool",
                  target=20, interval=0.5),
    # bad configs: a bus that was never loaded, an unknown argument, values out of range, a wrong pin,
    # a reference to a component that is not there
    "nobus": spec(".sensors.htu21d", "HTU21D", i2c="i2c2"),
    "typo": spec(".machine.switch", "Switch", pin=16, activ_low=True),
    "badres": spec(".sensors.ds18b20", "DS18B20", onewire="ow", resolution=14),
    "badpin": spec(".machine.relay", "Relay", pin=99),
    "badbtn": spec(".machine.button", "Button", pin=18, debounce=50, long_press=20),
    "badpwm": spec(".machine.pwm", "PWM", pin=19, gamma=9),
    "badbuzz": spec(".devices.buzzer", "Buzzer", pin=21, volume=200),
    "badadc": spec(".machine.adc", "ADC", pin=35, scale="x"),
    "badstats": spec(".machine.stats", "Stats", interval=0),
    "badrom": spec(".sensors.ds18b20", "DS18B20", onewire="ow", rom="10ff4a1c33160456"),
    "nosensor": spec(".devices.thermostat", "Thermostat", sensor="nobody", switch="cooler"),
}
BAD = {"nobus": "i2c: no I2C bus 'i2c2'", "typo": "activ_low", "badres": "resolution", "badpin": "invalid pin 99",
       "badbtn": "long_press", "badpwm": "gamma", "badbuzz": "volume", "badadc": "scale", "badstats": "interval",
       "badrom": "rom: 16 hex digits starting 28", "nosensor": "sensor: 'nobody' has no temperature()"}


class Rig:
    """A virtual node (fleet.vnode) with its filesystem, and the topics a test reads and drives."""

    def __init__(self, vn: VirtualNode, home: str) -> None:
        self.vn, self.home, self.id = vn, home, vn.id
        self.pre = f"{home}/{vn.id}"

    def topic(self, name: str) -> str:
        return f"{self.pre}/{name}"

    def sim(self, part: str) -> str:
        return f"{self.home}/_sim/{self.id}/{part}"

    def log(self, level: str) -> str:
        return f"{self.home}/log/{level}/{self.id}"


def node_files(components: dict[str, Any], board: dict[str, Any] | None = BOARD, interval: int = 1,
               ) -> dict[str, Any]:
    """The filesystem of a node running `components` (loader format; `_order` added when missing)."""
    config = components if "_order" in components else {"_order": list(components), **components}
    return {"components.json": config, "board.json": board or {"models": []},
            "config.py": f"RECEIVE_CONFIG = False\nINTERVAL = {interval}\nDEBUG = True\n"}


@contextlib.asynccontextmanager
async def running(broker: BrokerSettings, fs: Path, node_id: str, files: dict[str, Any],
                  *filters: str) -> AsyncIterator[tuple[Rig, Observer]]:
    """A node booted from `files`, and an observer of its home (subscribed before the node starts)."""
    async with Observer(broker, f"{broker.home}/#", *filters) as obs, \
            VirtualNode(make_fs(fs, files), node_id, broker, heap="512K") as vn:
        await vn.wait_for(r"main: running", timeout=20)
        rig = Rig(vn, broker.home)
        await obs.wait(rig.topic("info"), timeout=20)  # sent once subscribed: commands are heard from here on
        yield rig, obs


def payloads(obs: Observer, topic: str, start: int = 0) -> list[bytes]:
    return [p for t, p, _ in obs.msgs[start:] if t == topic]


def number(p: bytes) -> float:
    return float(p.decode())


def near(key: str | None, want: float, tol: float) -> Callable[[bytes], bool]:
    def ok(p: bytes) -> bool:
        v = json.loads(p)
        v = v.get(key) if key and isinstance(v, dict) else v
        return isinstance(v, int | float) and abs(v - want) <= tol
    return ok


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def full(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Rig, Observer]]:
    broker = BrokerSettings(mosquitto.url, f"c{uuid.uuid4().hex[:8]}")
    async with FleetClient(broker) as c:
        # retained states from "before the reboot": the switch and the light take them back
        await c.publish(f"{broker.home}/full/lamp", "ON", qos=1, retain=True)
        await c.publish(f"{broker.home}/full/strip", '{"state": "ON", "brightness": 51}', qos=1, retain=True)
    async with running(broker, tmp_path_factory.mktemp("full"), "full", node_files(FULL),
                       "homeassistant/+/full/#") as rig:
        yield rig
        for t in ("lamp", "strip"):  # retained messages would outlive the module in the session broker
            await rig[1].publish(rig[0].topic(t), b"", retain=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def faulty(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory,
                 ) -> AsyncIterator[tuple[Rig, Observer]]:
    broker = BrokerSettings(mosquitto.url, f"c{uuid.uuid4().hex[:8]}")
    async with running(broker, tmp_path_factory.mktemp("faulty"), "faulty", node_files(FAULTY)) as rig:
        yield rig


# --- state, discovery -------------------------------------------------------------------------------------

DISCOVERY = {
    "switch": ["heater", "lamp", "led", "pump"], "binary_sensor": ["btn"], "light": ["strip"], "button": ["buzzer"],
    "climate": ["thermo", "aqua"],
    "sensor": ["htu_temperature", "htu_humidity", "bme_temperature", "bme_humidity", "bme_pressure", "water",
               "porch_temperature", "porch_humidity", "ram", "bat", "avg", "dlt", "stats_uptime", "stats_reconnects"],
}
COMMANDED = {"heater", "lamp", "led", "strip", "buzzer", "thermo", "pump", "aqua"}


async def test_every_component_announces_itself(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    for platform, objs in DISCOVERY.items():
        for obj in objs:
            d = json.loads(await obs.wait(f"homeassistant/{platform}/full/{obj}/config"))
            component = obj.split("_")[0]
            assert d["unique_id"] == f"full_{obj}"
            assert d["state_topic"] == node.topic(component)
            assert d["availability_topic"] == node.topic("status")
            assert d["device"]["identifiers"] == ["smartfleet_full"]
            assert ("command_topic" in d or "mode_command_topic" in d) == (component in COMMANDED), obj
            if platform == "sensor" and component != "stats":
                assert d["expire_after"] > 0  # a sensor that stops answering shows unavailable
    t = json.loads(await obs.wait("homeassistant/sensor/full/bme_pressure/config"))
    assert (t["unit_of_measurement"], t["device_class"], t["value_template"]) == \
        ("hPa", "pressure", "{{ value_json.pressure }}")
    light = json.loads(await obs.wait("homeassistant/light/full/strip/config"))
    assert light["schema"] == "json" and light["brightness"] is True
    climate = json.loads(await obs.wait("homeassistant/climate/full/thermo/config"))
    assert climate["temperature_command_topic"] == node.topic("thermo/set")
    assert climate["current_temperature_template"] == "{{ value_json.current }}"


async def test_versions_in_info(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    info = json.loads(await obs.wait(node.topic("info")))
    assert info["failed"] == {}
    assert set(info["components"]) == set(FULL)
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) and v != "0.0.0" for v in info["components"].values())


async def test_buses_publish_what_they_found(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    assert json.loads(await obs.wait(node.topic("i2c"))) == ["0x40", "0x76"]
    assert json.loads(await obs.wait(node.topic("ow"))) == ["28ff4a1c33160456"]


async def test_sensor_readings_through_the_real_drivers(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    htu = json.loads(await obs.wait(node.topic("htu")))
    assert abs(htu["temperature"] - 22.5) <= 0.2 and abs(htu["humidity"] - 40) <= 1
    assert isinstance(htu["humidity"], int)  # precision 0 for humidity
    bme = json.loads(await obs.wait(node.topic("bme")))
    assert abs(bme["temperature"] - 18.0) <= 0.15 and abs(bme["humidity"] - 55) <= 0.7
    assert abs(bme["pressure"] - 990.5) <= 0.3
    assert abs(number(await obs.wait(node.topic("water"))) + 3.25) <= 0.2  # below zero: two's complement
    porch = json.loads(await obs.wait(node.topic("porch")))
    assert abs(porch["temperature"] + 1.5) <= 0.2 and abs(porch["humidity"] - 80) <= 0.6  # sign bit
    assert number(await obs.wait(node.topic("ram"))) > 1000
    stats = json.loads(await obs.wait(node.topic("stats")))
    assert stats["uptime"] >= 0 and stats["reconnects"] == 0


async def test_model_inputs_set_over_mqtt(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    m = obs.mark()
    await obs.publish(node.sim("htu21d-0x40/set"), '{"temperature": -12.0, "humidity": 97}')
    await obs.wait(node.topic("htu"), lambda p: near("temperature", -12.0, 0.2)(p) and near("humidity", 97, 1)(p),
             start=m)
    await obs.publish(node.sim("ds18b20-28ff4a1c33160456/set"), '{"temperature": 85.5}')
    await obs.wait(node.topic("water"), near(None, 85.5, 0.2), start=m)
    m = obs.mark()
    await obs.publish(node.sim("htu21d-0x40/set"), '{"temperature": "hot"}')  # malformed: logged and dropped
    err = await obs.wait(node.log("error"), lambda p: b"htu21d-0x40" in p, start=m)
    assert b"temperature must be a number" in err
    await obs.wait(node.topic("htu"), near("temperature", -12.0, 0.2), start=m)  # the model kept its value


async def test_adc_scales_the_raw_reading(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    m = obs.mark()
    await obs.publish(node.sim("adc34/set"), "32768")
    await obs.wait(node.topic("bat"), near(None, 3.3, 0.01), start=m)
    await obs.publish(node.sim("adc34/set"), "70000")  # out of range: refused, logged
    await obs.wait(node.log("error"), lambda p: b"adc34" in p, start=m)


async def test_moving_average_window(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    m = obs.mark()
    await obs.publish(node.sim("adc35/set"), "0")
    await obs.wait(node.topic("avg"), lambda p: p == b"0.0", start=m)
    await asyncio.sleep(3.2)  # three readings of 0 fill the window
    m = obs.mark()
    await obs.publish(node.sim("adc35/set"), "65535")
    await obs.wait(node.topic("avg"), lambda p: p == b"100.0", start=m)
    assert payloads(obs, node.topic("avg"), m)[-3:] == [b"33.3", b"66.7", b"100.0"]


async def test_delta_and_throttle(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    await obs.wait(node.topic("dlt"))  # the first reading is published
    await asyncio.sleep(1.1)
    m = obs.mark()
    await obs.publish(node.sim("adc36/set"), "1311")  # 2 %: less than delta, and the heartbeat is 60 s away
    await asyncio.sleep(1.0)
    assert payloads(obs, node.topic("dlt"), m) == []
    await obs.publish(node.sim("adc36/set"), "6554")  # 10 %: published at once
    await obs.wait(node.topic("dlt"), lambda p: p == b"10.0", start=m)
    t1 = time.monotonic()
    await obs.publish(node.sim("adc36/set"), "32768")  # 50 %, but throttled to one publish a second
    await obs.wait(node.topic("dlt"), lambda p: p == b"50.0", start=m)
    assert time.monotonic() - t1 >= 0.7


# --- switches and outputs ----------------------------------------------------------------------------------

async def test_switch_restored_and_commanded(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    await obs.wait(node.topic("lamp"), lambda p: p == b"ON")  # from the retained state
    await obs.wait(node.sim("pin12/level"), lambda p: p == b"1")
    m = obs.mark()
    await obs.publish(node.topic("lamp/set"), "OFF")
    await obs.wait(node.sim("pin12/level"), lambda p: p == b"0", start=m)
    await obs.wait(node.topic("lamp"), lambda p: p == b"OFF", start=m)
    m = obs.mark()
    await obs.publish(node.topic("lamp/set"), "toggle")
    await obs.wait(node.topic("lamp"), lambda p: p == b"ON", start=m)
    m = obs.mark()
    await obs.publish(node.topic("lamp/set"), "DIM")  # malformed: logged with its topic, state unchanged
    err = await obs.wait(node.log("error"), lambda p: b"lamp/set" in p, start=m)
    assert b"ON, OFF, TOGGLE" in err
    assert node.topic("lamp") not in [t for t, _, _ in obs.msgs[m:]]


async def test_relay_is_active_low(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    m = obs.mark()
    await obs.publish(node.topic("heater/set"), "OFF")  # the thermostat may have it on: it is 18 °C
    await obs.wait(node.topic("heater"), start=m)
    await obs.publish(node.topic("thermo/set"), "off")  # keep the thermostat out of this test
    m = obs.mark()
    await obs.publish(node.topic("heater/set"), "ON")
    await obs.wait(node.topic("heater"), lambda p: p == b"ON", start=m)
    await obs.wait(node.sim("pin14/level"), lambda p: p == b"0", start=m)
    m = obs.mark()
    await obs.publish(node.topic("heater/set"), "OFF")
    await obs.wait(node.sim("pin14/level"), lambda p: p == b"1", start=m)


async def test_button_press_and_long_press(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    await obs.wait(node.topic("btn"), lambda p: p == b"OFF")
    m = obs.mark()
    await obs.publish(node.sim("pin0/set"), "0")  # a bounce: shorter than the debounce time
    await obs.publish(node.sim("pin0/set"), "1")
    await asyncio.sleep(0.2)
    assert payloads(obs, node.topic("btn"), m) == []
    await obs.publish(node.sim("pin0/set"), "0")  # pulled up, pressed = 0
    await obs.wait(node.topic("btn"), lambda p: p == b"ON", start=m)
    await asyncio.sleep(0.15)
    await obs.publish(node.sim("pin0/set"), "1")
    await obs.wait(node.topic("btn"), lambda p: p == b"OFF", start=m)
    assert await obs.wait(node.topic("btn/event"), start=m) == b"press"
    m = obs.mark()
    await obs.publish(node.sim("pin0/set"), "0")
    assert await obs.wait(node.topic("btn/event"), start=m) == b"long"
    await obs.publish(node.sim("pin0/set"), "1")
    await obs.wait(node.topic("btn"), lambda p: p == b"OFF", start=m)
    await asyncio.sleep(0.2)
    assert payloads(obs, node.topic("btn/event"), m) == [b"long"]  # no short press after a long one


async def test_led_blinks_and_stops(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    m = obs.mark()
    await obs.publish(node.topic("led/set"), "fast")
    await obs.wait(node.topic("led"), lambda p: p == b"ON", start=m)
    await asyncio.sleep(0.6)
    levels = payloads(obs, node.sim("pin2/level"), m)
    assert levels.count(b"1") >= 2 and levels.count(b"0") >= 2, levels
    m = obs.mark()
    await obs.publish(node.topic("led/set"), "OFF")
    await obs.wait(node.topic("led"), lambda p: p == b"OFF", start=m)
    await asyncio.sleep(0.3)
    m2 = obs.mark()
    await asyncio.sleep(0.3)
    assert payloads(obs, node.sim("pin2/level"), m2) == []  # the pattern stopped
    assert payloads(obs, node.sim("pin2/level"))[-1] == b"0"  # dark
    await obs.publish(node.topic("led/set"), "disco")
    err = await obs.wait(node.log("error"), lambda p: b"led/set" in p, start=m)
    assert b"blink, fast, heartbeat" in err


async def test_pwm_light_brightness(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    # restored from the retained state at boot: on at brightness 51 (gamma 1: duty 51/255)
    await obs.wait(node.topic("strip"), lambda p: json.loads(p) == {"state": "ON", "brightness": 51})
    await obs.wait(node.sim("pwm15/duty"), lambda p: p == b"13107")
    m = obs.mark()
    await obs.publish(node.topic("strip/set"), '{"state": "ON", "brightness": 255}')
    await obs.wait(node.sim("pwm15/duty"), lambda p: p == b"65535", start=m)
    await obs.publish(node.topic("strip/set"), "OFF")
    await obs.wait(node.topic("strip"), lambda p: json.loads(p) == {"state": "OFF", "brightness": 255}, start=m)
    await obs.wait(node.sim("pwm15/duty"), lambda p: p == b"0", start=m)
    m = obs.mark()
    await obs.publish(node.topic("strip/set"), "128")  # a bare brightness switches on
    await obs.wait(node.topic("strip"), lambda p: json.loads(p) == {"state": "ON", "brightness": 128}, start=m)
    await obs.wait(node.sim("pwm15/duty"), lambda p: p == b"32896", start=m)
    m = obs.mark()
    await obs.publish(node.topic("strip/set"), '{"brightness": 999}')
    await obs.wait(node.log("error"), lambda p: b"strip/set" in p and b"brightness must be 0-255" in p, start=m)


async def test_buzzer_plays_a_melody(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    m = obs.mark()
    await obs.publish(node.topic("buzzer/set"), "[[440, 100], [0, 50], [880, 100]]")
    await obs.wait(node.topic("buzzer"), lambda p: p == b"ON", start=m)
    await obs.wait(node.topic("buzzer"), lambda p: p == b"OFF", start=m)
    await asyncio.sleep(0.1)  # the virtual pins publish on their own
    duties = payloads(obs, node.sim("pwm25/duty"), m)
    assert duties == [b"16383", b"0", b"16383", b"0"], duties  # note, rest, note, silence
    m = obs.mark()
    await obs.publish(node.topic("buzzer/set"), "[[5, 100]]")
    await obs.wait(node.log("error"), lambda p: b"buzzer/set" in p and b"note" in p, start=m)


async def test_thermostat_follows_the_bme280(full: tuple[Rig, Observer]) -> None:
    """A virtual BME280 and a virtual relay: the relay follows the temperature set on the model."""
    node, obs = full
    await obs.wait(node.topic("thermo"))  # it controls once the states are restored: the relay's boot is over
    m = obs.mark()
    await obs.publish(node.topic("thermo/set"), "off")  # from a known state: off, and the heater with it
    await obs.wait(node.topic("thermo"), lambda p: json.loads(p)["action"] == "off", start=m)
    await obs.publish(node.topic("heater/set"), "OFF")
    await obs.wait(node.topic("heater"), lambda p: p == b"OFF", start=m)
    m = obs.mark()
    await obs.publish(node.topic("thermo/set"), '{"mode": "heat", "target": 21}')
    await obs.publish(node.sim("bme280-0x76/set"), '{"temperature": 17.0}')
    await obs.wait(node.topic("heater"), lambda p: p == b"ON", start=m)
    await obs.wait(node.sim("pin14/level"), lambda p: p == b"0", start=m)  # active low: on
    await obs.wait(node.topic("thermo"), lambda p: json.loads(p)["action"] == "heating", start=m)
    m = obs.mark()
    await obs.publish(node.sim("bme280-0x76/set"), '{"temperature": 21.2}')  # inside the band: stays on
    await obs.wait(node.topic("thermo"), near("current", 21.2, 0.15), start=m)
    await asyncio.sleep(1.2)
    assert node.topic("heater") not in [t for t, _, _ in obs.msgs[m:]]
    m = obs.mark()
    await obs.publish(node.sim("bme280-0x76/set"), '{"temperature": 23.0}')
    await obs.wait(node.topic("heater"), lambda p: p == b"OFF", start=m)
    await obs.wait(node.sim("pin14/level"), lambda p: p == b"1", start=m)
    m = obs.mark()
    await obs.publish(node.topic("thermo/set"), "25")  # a new target: heating again
    await obs.wait(node.topic("heater"), lambda p: p == b"ON", start=m)
    await obs.wait(node.topic("thermo"), lambda p: json.loads(p)["target"] == 25.0, start=m)
    m = obs.mark()
    await obs.publish(node.topic("thermo/set"), "99")
    await obs.wait(node.log("error"), lambda p: b"thermo/set" in p and b"target" in p, start=m)
    await obs.publish(node.topic("thermo/set"), "off")
    await obs.wait(node.topic("heater"), lambda p: p == b"OFF", start=m)


async def test_thermostat_takes_any_sensor_and_switch(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    m = obs.mark()
    await obs.publish(node.sim("ds18b20-28ff4a1c33160456/set"), '{"temperature": 20.0}')
    await obs.wait(node.topic("pump"), lambda p: p == b"ON", start=m)  # below 24 - 0.5
    await obs.wait(node.sim("pin26/level"), lambda p: p == b"1", start=m)
    await obs.publish(node.sim("ds18b20-28ff4a1c33160456/set"), '{"temperature": 26.0}')
    await obs.wait(node.topic("pump"), lambda p: p == b"OFF", start=m)
    await obs.wait(node.topic("aqua"), lambda p: near("current", 26.0, 0.2)(p) and json.loads(p)["action"] == "idle",
                   start=m)


async def test_states_come_back_after_a_restart(full: tuple[Rig, Observer]) -> None:
    node, obs = full
    m = obs.mark()
    await obs.publish(node.topic("thermo/set"), '{"mode": "cool", "target": 19.5}')
    await obs.wait(node.topic("thermo"), lambda p: json.loads(p)["mode"] == "cool", start=m)
    await obs.publish(node.topic("lamp/set"), "ON")
    await obs.wait(node.topic("lamp"), lambda p: p == b"ON", start=m)
    booted = node.vn.mark()
    await obs.publish(node.topic("cmd/set"), "restart")
    await node.vn.wait_for(r"main: running", timeout=20, start=booted)
    m = obs.mark()
    await obs.wait(node.topic("thermo"), lambda p: json.loads(p)["mode"] == "cool" and json.loads(p)["target"] == 19.5,
                   start=m)
    await obs.wait(node.sim("pin12/level"), lambda p: p == b"1", start=m)  # the lamp is on again


# --- failure paths -----------------------------------------------------------------------------------------

async def test_bad_configs_fail_alone(faulty: tuple[Rig, Observer]) -> None:
    node, obs = faulty
    info = json.loads(await obs.wait(node.topic("info")))
    assert set(info["failed"]) == set(BAD)
    for name, cause in BAD.items():
        assert cause in info["failed"][name], (name, info["failed"][name])
    errors = b"\n".join(payloads(obs, node.log("error")))
    for name in BAD:
        assert f"{name} did not load".encode() in errors
    await obs.wait(node.topic("htu"))  # the rest runs


@pytest.mark.parametrize(("model", "component", "fail", "cause"), [
    ("htu21d-0x40", "htu", "nack", b"no answer at 0x40"),
    ("htu21d-0x40", "htu", "crc", b"CRC mismatch"),
    ("bme280-0x76", "bme", "nack", b"no answer at 0x76"),
    ("bme280-0x76", "bme", "crc", b"reset value"),
    ("ds18b20-28ff4a1c33160456", "water", "nack", b"no presence pulse"),
    ("ds18b20-28ff4a1c33160456", "water", "crc", b"CRC mismatch"),
    ("dht22-pin4", "porch", "nack", b"110"),
    ("dht22-pin4", "porch", "crc", b"checksum"),
])
async def test_failing_chip_gives_none_and_an_error(faulty: tuple[Rig, Observer], model: str, component: str,
                                               fail: str, cause: bytes) -> None:
    node, obs = faulty
    await obs.wait(node.topic(component))
    m = obs.mark()
    await obs.publish(node.sim(f"{model}/set"), json.dumps({"fail": fail}))
    err = await obs.wait(node.log("error"), lambda p: p.split(b" ", 2)[1] == component.encode() + b":", start=m)
    assert b"read failed" in err and cause in err, err
    m2 = obs.mark()
    others = [c for c in ("htu", "bme", "water", "porch") if c != component]
    for other in others:  # the other sensors keep publishing
        await obs.wait(node.topic(other), start=m2)
    assert payloads(obs, node.topic(component), m2) == []  # no stale value presented as new
    m = obs.mark()
    await obs.publish(node.sim(f"{model}/set"), '{"fail": null}')
    await obs.wait(node.topic(component), start=m)  # and it comes back


async def test_thermostat_fails_safe(faulty: tuple[Rig, Observer]) -> None:
    node, obs = faulty
    m = obs.mark()
    await obs.publish(node.sim("bme280-0x76/set"), '{"temperature": 26.0, "fail": null}')
    await obs.wait(node.topic("cooler"), lambda p: p == b"ON", start=m)  # cooling above 20.5
    m = obs.mark()
    await obs.publish(node.sim("bme280-0x76/set"), '{"fail": "nack"}')
    await obs.wait(node.log("error"), lambda p: b"guard: no temperature from bme" in p, start=m)
    await obs.wait(node.topic("cooler"), lambda p: p == b"OFF", start=m)
    await obs.publish(node.sim("bme280-0x76/set"), '{"fail": null}')
    await obs.wait(node.topic("cooler"), lambda p: p == b"ON", start=m)


@pytest.mark.slow
async def test_thermostat_runs_without_a_broker(tmp_path: Path) -> None:
    """No broker at all: after waiting 10 s for its retained state the thermostat controls on its own."""
    from fleet.broker import free_port
    dead = BrokerSettings(f"mqtt://127.0.0.1:{free_port()}", f"c{uuid.uuid4().hex[:8]}")
    files = node_files({k: FULL[k] for k in ("i2c", "bme", "heater", "thermo")})
    async with VirtualNode(make_fs(tmp_path / "fs", files), "alone", dead, heap="512K") as vn:
        await vn.wait_for(r"thermo: no broker within 10 s", timeout=20)
        await vn.wait_for(r"thermo: heater on at 1[78]\.\d+ °C \(target 21\.0\)", timeout=5)
