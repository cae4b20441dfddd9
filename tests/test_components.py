"""The component library on virtual nodes: the real node code and the real drivers on the MicroPython unix
port, chip models on the virtual buses, a real Mosquitto.

Two nodes per run (module fixtures, so the suite stays quick): `full` loads every component against
healthy models; `faulty` loads sensors whose models a test makes fail, plus components whose config is
wrong, to show the error paths.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from fleet.broker import Mosquitto
from fleet.upy import MicroPython, UPyProcess

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
    # bad configs: a bus that was never loaded, an unknown argument, a value out of range
    "nobus": spec(".sensors.htu21d", "HTU21D", i2c="i2c2"),
    "typo": spec(".machine.switch", "Switch", pin=16, activ_low=True),
    "badres": spec(".sensors.ds18b20", "DS18B20", onewire="ow", resolution=14),
}


class Recorder:
    """Every message under the test's topics, kept in order, with waits on what is expected."""

    def __init__(self, port: int, filters: list[str]) -> None:
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.times: list[float] = []  # when each message arrived
        self._cond = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv311)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, 30)
        # paho's network thread: started here, stopped by close()
        self.c.loop_start()
        for f in filters:
            self.c.subscribe(f, 1)

    def _on_message(self, _c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        with self._cond:
            self.msgs.append((m.topic, bytes(m.payload), bool(m.retain)))
            self.times.append(time.monotonic())
            self._cond.notify_all()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def mark(self) -> int:
        with self._cond:
            return len(self.msgs)

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, 1, retain).wait_for_publish(5)

    def wait(self, topic: str, match: Callable[[bytes], bool] = lambda p: True, timeout: float = 10.0,
             start: int = 0) -> bytes:
        """The first payload on `topic` from message `start` on for which `match` holds."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.msgs):
                    t, p, _r = self.msgs[i]
                    i += 1
                    if t == topic and match(p):
                        return p
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [f"{t} {p[:80]!r}" for t, p, _ in self.msgs[start:] if t.startswith(topic.rsplit("/", 1)[0])]
                    raise AssertionError(f"nothing matching on {topic} within {timeout} s; seen:\n" +
                                         "\n".join(seen[-30:]))
                self._cond.wait(left)

    def on(self, topic: str, start: int = 0) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.msgs[start:] if t == topic]

    def timed(self, topic: str, start: int = 0) -> list[tuple[float, bytes]]:
        with self._cond:
            return [(w, p) for (t, p, _), w in zip(self.msgs[start:], self.times[start:], strict=True) if t == topic]


class VNode:
    """A virtual node: a folder as its filesystem (main.py, config.py, board.json, components.json), run
    by the unix port against the broker; `sim()` drives its virtual hardware."""

    def __init__(self, fs: Path, broker: Mosquitto, home: str, node_id: str, components: dict[str, Any],
                 board: dict[str, Any] | None = BOARD, interval: int = 1) -> None:
        fs.mkdir(parents=True, exist_ok=True)
        (fs / "main.py").write_text("from pysmartnode import main\nmain.run()\n")
        (fs / "config.py").write_text(f"RECEIVE_CONFIG = False\nINTERVAL = {interval}\nDEBUG = True\n"
                                      "DEBUG_STOP_AFTER_EXECUTION = True\n")
        (fs / "board.json").write_text(json.dumps(board or {"models": []}))
        config = components if "_order" in components else {"_order": list(components), **components}
        (fs / "components.json").write_text(json.dumps(config))
        self.home, self.id = home, node_id
        self.pre = f"{home}/{node_id}"
        self.runner = MicroPython(fs, heap="512K", env={"FLEET_BROKER": broker.url, "FLEET_HOME": home,
                                                         "FLEET_NODE_ID": node_id})
        self.proc: UPyProcess | None = None

    def start(self) -> VNode:
        self.proc = self.runner.start("main.py", name=self.id)
        self.proc.wait_for(r"main: running", timeout=20)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def topic(self, name: str) -> str:
        return f"{self.pre}/{name}"

    def sim(self, part: str) -> str:
        return f"{self.home}/_sim/{self.id}/{part}"

    def log(self, level: str) -> str:
        return f"{self.home}/log/{level}/{self.id}"


def number(p: bytes) -> float:
    return float(p.decode())


def near(key: str | None, want: float, tol: float) -> Callable[[bytes], bool]:
    def ok(p: bytes) -> bool:
        v = json.loads(p)
        v = v.get(key) if key and isinstance(v, dict) else v
        return isinstance(v, int | float) and abs(v - want) <= tol
    return ok


@pytest.fixture(scope="module")
def full(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VNode, Recorder]]:
    home = f"c{uuid.uuid4().hex[:8]}"
    node = VNode(tmp_path_factory.mktemp("full"), mosquitto, home, "full", FULL)
    rec = Recorder(mosquitto.port, [f"{home}/#", "homeassistant/+/full/#"])
    # retained states from "before the reboot": the switch and the light take them back
    rec.publish(node.topic("lamp"), "ON", retain=True)
    rec.publish(node.topic("strip"), '{"state": "ON", "brightness": 51}', retain=True)
    node.start()
    yield node, rec
    node.stop()
    for t in ("lamp", "strip"):  # retained messages would outlive the test in the session broker
        rec.publish(node.topic(t), b"", retain=True)
    rec.close()


@pytest.fixture(scope="module")
def faulty(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VNode, Recorder]]:
    home = f"c{uuid.uuid4().hex[:8]}"
    node = VNode(tmp_path_factory.mktemp("faulty"), mosquitto, home, "faulty", FAULTY)
    rec = Recorder(mosquitto.port, [f"{home}/#"])
    node.start()
    yield node, rec
    node.stop()
    rec.close()


# --- state, discovery -------------------------------------------------------------------------------------

DISCOVERY = {
    "switch": ["heater", "lamp", "led"], "binary_sensor": ["btn"], "light": ["strip"], "button": ["buzzer"],
    "climate": ["thermo"],
    "sensor": ["htu_temperature", "htu_humidity", "bme_temperature", "bme_humidity", "bme_pressure", "water",
               "porch_temperature", "porch_humidity", "ram", "bat", "avg", "dlt", "stats_uptime", "stats_reconnects"],
}
COMMANDED = {"heater", "lamp", "led", "strip", "buzzer", "thermo"}


def test_every_component_announces_itself(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    for platform, objs in DISCOVERY.items():
        for obj in objs:
            d = json.loads(rec.wait(f"homeassistant/{platform}/full/{obj}/config"))
            component = obj.split("_")[0]
            assert d["unique_id"] == f"full_{obj}"
            assert d["state_topic"] == node.topic(component)
            assert d["availability_topic"] == node.topic("status")
            assert d["device"]["identifiers"] == ["smartfleet_full"]
            assert ("command_topic" in d or "mode_command_topic" in d) == (component in COMMANDED), obj
            if platform == "sensor" and component != "stats":
                assert d["expire_after"] > 0  # a sensor that stops answering shows unavailable
    t = json.loads(rec.wait("homeassistant/sensor/full/bme_pressure/config"))
    assert (t["unit_of_measurement"], t["device_class"], t["value_template"]) == \
        ("hPa", "pressure", "{{ value_json.pressure }}")
    light = json.loads(rec.wait("homeassistant/light/full/strip/config"))
    assert light["schema"] == "json" and light["brightness"] is True
    climate = json.loads(rec.wait("homeassistant/climate/full/thermo/config"))
    assert climate["temperature_command_topic"] == node.topic("thermo/set")
    assert climate["current_temperature_template"] == "{{ value_json.current }}"


def test_versions_in_info(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    info = json.loads(rec.wait(node.topic("info")))
    assert info["failed"] == {}
    assert set(info["components"]) == set(FULL)
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) and v != "0.0.0" for v in info["components"].values())


def test_buses_publish_what_they_found(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    assert json.loads(rec.wait(node.topic("i2c"))) == ["0x40", "0x76"]
    assert json.loads(rec.wait(node.topic("ow"))) == ["28ff4a1c33160456"]


def test_sensor_readings_through_the_real_drivers(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    htu = json.loads(rec.wait(node.topic("htu")))
    assert abs(htu["temperature"] - 22.5) <= 0.2 and abs(htu["humidity"] - 40) <= 1
    assert isinstance(htu["humidity"], int)  # precision 0 for humidity
    bme = json.loads(rec.wait(node.topic("bme")))
    assert abs(bme["temperature"] - 18.0) <= 0.15 and abs(bme["humidity"] - 55) <= 0.7
    assert abs(bme["pressure"] - 990.5) <= 0.3
    assert abs(number(rec.wait(node.topic("water"))) + 3.25) <= 0.2  # below zero: two's complement
    porch = json.loads(rec.wait(node.topic("porch")))
    assert abs(porch["temperature"] + 1.5) <= 0.2 and abs(porch["humidity"] - 80) <= 0.6  # sign bit
    assert number(rec.wait(node.topic("ram"))) > 1000
    stats = json.loads(rec.wait(node.topic("stats")))
    assert stats["uptime"] >= 0 and stats["reconnects"] == 0


def test_model_inputs_set_over_mqtt(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    m = rec.mark()
    rec.publish(node.sim("htu21d-0x40/set"), '{"temperature": -12.0, "humidity": 97}')
    rec.wait(node.topic("htu"), lambda p: near("temperature", -12.0, 0.2)(p) and near("humidity", 97, 1)(p),
             start=m)
    rec.publish(node.sim("ds18b20-28ff4a1c33160456/set"), '{"temperature": 85.5}')
    rec.wait(node.topic("water"), near(None, 85.5, 0.2), start=m)
    m = rec.mark()
    rec.publish(node.sim("htu21d-0x40/set"), '{"temperature": "hot"}')  # malformed: logged and dropped
    err = rec.wait(node.log("error"), lambda p: b"htu21d-0x40" in p, start=m)
    assert b"temperature must be a number" in err
    rec.wait(node.topic("htu"), near("temperature", -12.0, 0.2), start=m)  # the model kept its value


def test_adc_scales_the_raw_reading(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    m = rec.mark()
    rec.publish(node.sim("adc34/set"), "32768")
    rec.wait(node.topic("bat"), near(None, 3.3, 0.01), start=m)
    rec.publish(node.sim("adc34/set"), "70000")  # out of range: refused, logged
    rec.wait(node.log("error"), lambda p: b"adc34" in p, start=m)


def test_moving_average_window(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    m = rec.mark()
    rec.publish(node.sim("adc35/set"), "0")
    rec.wait(node.topic("avg"), lambda p: p == b"0.0", start=m)
    time.sleep(3.2)  # three readings of 0 fill the window
    m = rec.mark()
    rec.publish(node.sim("adc35/set"), "65535")
    rec.wait(node.topic("avg"), lambda p: p == b"100.0", start=m)
    assert rec.on(node.topic("avg"), m)[-3:] == [b"33.3", b"66.7", b"100.0"]


def test_delta_and_throttle(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    rec.wait(node.topic("dlt"))  # the first reading is published
    time.sleep(1.1)
    m = rec.mark()
    rec.publish(node.sim("adc36/set"), "1311")  # 2 %: less than delta, and the heartbeat is 60 s away
    time.sleep(1.0)
    assert rec.on(node.topic("dlt"), m) == []
    rec.publish(node.sim("adc36/set"), "6554")  # 10 %: published at once
    rec.wait(node.topic("dlt"), lambda p: p == b"10.0", start=m)
    rec.publish(node.sim("adc36/set"), "32768")  # 50 %, but throttled to one publish a second
    rec.wait(node.topic("dlt"), lambda p: p == b"50.0", start=m)
    (t1, _), (t2, _) = rec.timed(node.topic("dlt"), m)
    assert t2 - t1 >= 0.8


# --- switches and outputs ----------------------------------------------------------------------------------

def test_switch_restored_and_commanded(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    rec.wait(node.topic("lamp"), lambda p: p == b"ON")  # from the retained state
    rec.wait(node.sim("pin12/level"), lambda p: p == b"1")
    m = rec.mark()
    rec.publish(node.topic("lamp/set"), "OFF")
    rec.wait(node.sim("pin12/level"), lambda p: p == b"0", start=m)
    rec.wait(node.topic("lamp"), lambda p: p == b"OFF", start=m)
    m = rec.mark()
    rec.publish(node.topic("lamp/set"), "toggle")
    rec.wait(node.topic("lamp"), lambda p: p == b"ON", start=m)
    m = rec.mark()
    rec.publish(node.topic("lamp/set"), "DIM")  # malformed: logged with its topic, state unchanged
    err = rec.wait(node.log("error"), lambda p: b"lamp/set" in p, start=m)
    assert b"ON, OFF, TOGGLE" in err
    assert node.topic("lamp") not in [t for t, _, _ in rec.msgs[m:]]


def test_relay_is_active_low(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    m = rec.mark()
    rec.publish(node.topic("heater/set"), "OFF")  # the thermostat may have it on: it is 18 °C
    rec.wait(node.topic("heater"), start=m)
    rec.publish(node.topic("thermo/set"), "off")  # keep the thermostat out of this test
    m = rec.mark()
    rec.publish(node.topic("heater/set"), "ON")
    rec.wait(node.topic("heater"), lambda p: p == b"ON", start=m)
    rec.wait(node.sim("pin14/level"), lambda p: p == b"0", start=m)
    m = rec.mark()
    rec.publish(node.topic("heater/set"), "OFF")
    rec.wait(node.sim("pin14/level"), lambda p: p == b"1", start=m)


def test_button_press_and_long_press(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    rec.wait(node.topic("btn"), lambda p: p == b"OFF")
    m = rec.mark()
    rec.publish(node.sim("pin0/set"), "0")  # pulled up, pressed = 0
    rec.wait(node.topic("btn"), lambda p: p == b"ON", start=m)
    time.sleep(0.15)
    rec.publish(node.sim("pin0/set"), "1")
    rec.wait(node.topic("btn"), lambda p: p == b"OFF", start=m)
    assert rec.wait(node.topic("btn/event"), start=m) == b"press"
    m = rec.mark()
    rec.publish(node.sim("pin0/set"), "0")
    assert rec.wait(node.topic("btn/event"), start=m) == b"long"
    rec.publish(node.sim("pin0/set"), "1")
    rec.wait(node.topic("btn"), lambda p: p == b"OFF", start=m)
    time.sleep(0.2)
    assert rec.on(node.topic("btn/event"), m) == [b"long"]  # no short press after a long one


def test_led_blinks_and_stops(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    m = rec.mark()
    rec.publish(node.topic("led/set"), "fast")
    rec.wait(node.topic("led"), lambda p: p == b"ON", start=m)
    time.sleep(0.6)
    levels = rec.on(node.sim("pin2/level"), m)
    assert levels.count(b"1") >= 2 and levels.count(b"0") >= 2, levels
    m = rec.mark()
    rec.publish(node.topic("led/set"), "OFF")
    rec.wait(node.topic("led"), lambda p: p == b"OFF", start=m)
    time.sleep(0.3)
    assert rec.on(node.sim("pin2/level"), rec.mark() - 1)[-1:] in ([b"0"], [])
    m2 = rec.mark()
    time.sleep(0.3)
    assert rec.on(node.sim("pin2/level"), m2) == []  # the pattern stopped


def test_pwm_light_brightness(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    # restored from the retained state at boot: on at brightness 51 (gamma 1: duty 51/255)
    rec.wait(node.topic("strip"), lambda p: json.loads(p) == {"state": "ON", "brightness": 51})
    rec.wait(node.sim("pwm15/duty"), lambda p: p == b"13107")
    m = rec.mark()
    rec.publish(node.topic("strip/set"), '{"state": "ON", "brightness": 255}')
    rec.wait(node.sim("pwm15/duty"), lambda p: p == b"65535", start=m)
    rec.publish(node.topic("strip/set"), "OFF")
    rec.wait(node.topic("strip"), lambda p: json.loads(p) == {"state": "OFF", "brightness": 255}, start=m)
    rec.wait(node.sim("pwm15/duty"), lambda p: p == b"0", start=m)
    m = rec.mark()
    rec.publish(node.topic("strip/set"), '{"brightness": 999}')
    rec.wait(node.log("error"), lambda p: b"strip/set" in p and b"brightness must be 0-255" in p, start=m)


def test_buzzer_plays_a_melody(full: tuple[VNode, Recorder]) -> None:
    node, rec = full
    m = rec.mark()
    rec.publish(node.topic("buzzer/set"), "[[440, 100], [0, 50], [880, 100]]")
    rec.wait(node.topic("buzzer"), lambda p: p == b"ON", start=m)
    rec.wait(node.topic("buzzer"), lambda p: p == b"OFF", start=m)
    time.sleep(0.1)  # the virtual pins publish on their own
    duties = rec.on(node.sim("pwm25/duty"), m)
    assert duties == [b"16383", b"0", b"16383", b"0"], duties  # note, rest, note, silence
    m = rec.mark()
    rec.publish(node.topic("buzzer/set"), "[[5, 100]]")
    rec.wait(node.log("error"), lambda p: b"buzzer/set" in p and b"note" in p, start=m)


def test_thermostat_follows_the_bme280(full: tuple[VNode, Recorder]) -> None:
    """A virtual BME280 and a virtual relay: the relay follows the temperature set on the model."""
    node, rec = full
    m = rec.mark()
    rec.publish(node.topic("thermo/set"), '{"mode": "heat", "target": 21}')
    rec.publish(node.sim("bme280-0x76/set"), '{"temperature": 17.0}')
    rec.wait(node.topic("heater"), lambda p: p == b"ON", start=m)
    rec.wait(node.sim("pin14/level"), lambda p: p == b"0", start=m)  # active low: on
    rec.wait(node.topic("thermo"), lambda p: json.loads(p)["action"] == "heating", start=m)
    m = rec.mark()
    rec.publish(node.sim("bme280-0x76/set"), '{"temperature": 21.2}')  # inside the band: stays on
    rec.wait(node.topic("thermo"), near("current", 21.2, 0.15), start=m)
    time.sleep(1.2)
    assert node.topic("heater") not in [t for t, _, _ in rec.msgs[m:]]
    m = rec.mark()
    rec.publish(node.sim("bme280-0x76/set"), '{"temperature": 23.0}')
    rec.wait(node.topic("heater"), lambda p: p == b"OFF", start=m)
    rec.wait(node.sim("pin14/level"), lambda p: p == b"1", start=m)
    m = rec.mark()
    rec.publish(node.topic("thermo/set"), "25")  # a new target: heating again
    rec.wait(node.topic("heater"), lambda p: p == b"ON", start=m)
    rec.wait(node.topic("thermo"), lambda p: json.loads(p)["target"] == 25.0, start=m)
    m = rec.mark()
    rec.publish(node.topic("thermo/set"), "99")
    rec.wait(node.log("error"), lambda p: b"thermo/set" in p and b"target" in p, start=m)
    rec.publish(node.topic("thermo/set"), "off")
    rec.wait(node.topic("heater"), lambda p: p == b"OFF", start=m)


# --- failure paths -----------------------------------------------------------------------------------------

def test_bad_configs_fail_alone(faulty: tuple[VNode, Recorder]) -> None:
    node, rec = faulty
    info = json.loads(rec.wait(node.topic("info")))
    assert set(info["failed"]) == {"nobus", "typo", "badres"}
    assert "i2c: no I2C bus 'i2c2'" in info["failed"]["nobus"]
    assert "activ_low" in info["failed"]["typo"]
    assert "resolution" in info["failed"]["badres"]
    errors = b"\n".join(rec.on(node.log("error")))
    for name in (b"nobus", b"typo", b"badres"):
        assert name + b" did not load" in errors
    rec.wait(node.topic("htu"))  # the rest runs


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
def test_failing_chip_gives_none_and_an_error(faulty: tuple[VNode, Recorder], model: str, component: str,
                                               fail: str, cause: bytes) -> None:
    node, rec = faulty
    rec.wait(node.topic(component))
    m = rec.mark()
    rec.publish(node.sim(f"{model}/set"), json.dumps({"fail": fail}))
    err = rec.wait(node.log("error"), lambda p: p.split(b" ", 2)[1] == component.encode() + b":", start=m)
    assert b"read failed" in err and cause in err, err
    m2 = rec.mark()
    others = [c for c in ("htu", "bme", "water", "porch") if c != component]
    for other in others:  # the other sensors keep publishing
        rec.wait(node.topic(other), start=m2)
    assert rec.on(node.topic(component), m2) == []  # no stale value presented as new
    m = rec.mark()
    rec.publish(node.sim(f"{model}/set"), '{"fail": null}')
    rec.wait(node.topic(component), start=m)  # and it comes back


def test_thermostat_fails_safe(faulty: tuple[VNode, Recorder]) -> None:
    node, rec = faulty
    m = rec.mark()
    rec.publish(node.sim("bme280-0x76/set"), '{"temperature": 26.0, "fail": null}')
    rec.wait(node.topic("cooler"), lambda p: p == b"ON", start=m)  # cooling above 20.5
    m = rec.mark()
    rec.publish(node.sim("bme280-0x76/set"), '{"fail": "nack"}')
    rec.wait(node.log("error"), lambda p: b"guard: no temperature from bme" in p, start=m)
    rec.wait(node.topic("cooler"), lambda p: p == b"OFF", start=m)
    rec.publish(node.sim("bme280-0x76/set"), '{"fail": null}')
    rec.wait(node.topic("cooler"), lambda p: p == b"ON", start=m)
