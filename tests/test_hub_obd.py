"""The OBD job against real parts: Mosquitto and the PyPI ELM327-emulator on a free TCP port.

The job runs on tests/hubstub.py (a minimal Hub over a real FleetClient), so these tests see the job
alone; test_hub_obd_service.py runs it inside the real hub service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.hjsonpos import loads
from fleet.mqtt import BrokerSettings, FleetClient
from hub.jobs.obd import ObdJob
from tests.elm import Emulator
from tests.hubstub import running_job

HUB = "car"


@pytest.fixture
def elm(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(tmp_path / "elm") as emulator:
        yield emulator


def job_config(elm: Emulator, **extra: Any) -> dict[str, Any]:
    return {"port": elm.url, "baudrate": 38400, "protocol": "6", "retry": [0.5, 1], **extra}


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run `coro` as a task named `name` while the block runs; cancelled when the block ends."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=15)  # a task that does not stop fails the test, never hangs it
        assert task.done(), f"{name} did not stop within 15 s of being cancelled"
        if not task.cancelled():
            task.result()  # what it failed with


class Listener:
    """A test's MQTT client: collects what arrives, waits for what it expects."""

    def __init__(self, client: FleetClient) -> None:
        self.client = client
        self.seen: list[tuple[str, bytes, Any]] = []
        self._new = asyncio.Event()

    async def read(self) -> None:
        async for msg in self.client.messages:
            self.seen.append((msg.topic.value, bytes(msg.payload or b""), msg.properties))
            self._new.set()

    async def wait(self, match: Callable[[str, bytes], bool], timeout: float = 15.0,
                   after: int = 0) -> tuple[str, bytes, Any]:
        """The first message from index `after` on that matches."""
        deadline = time.monotonic() + timeout
        start = after
        while True:
            for i in range(start, len(self.seen)):
                if match(self.seen[i][0], self.seen[i][1]):
                    return self.seen[i]
            start = len(self.seen)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"nothing matched in {timeout} s; last seen: {self.seen[-5:]}")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    def count(self, topic: str) -> int:
        return sum(1 for t, _, _ in self.seen if t == topic)


@contextlib.asynccontextmanager
async def listening(settings: BrokerSettings, *filters: str) -> AsyncIterator[Listener]:
    async with FleetClient(settings) as client:
        for f in filters:
            await client.subscribe(f, 1)
        listener = Listener(client)
        async with background(listener.read(), "test-obd-listener"):
            yield listener


def on(topic: str, payload: str | None = None) -> Callable[[str, bytes], bool]:
    return lambda t, p: t == topic and (payload is None or p.decode() == payload)


async def test_rpm_and_speed_arrive_with_units(settings: BrokerSettings, tmp_path: Path, elm: Emulator) -> None:
    home = settings.home
    async with listening(settings, f"{home}/{HUB}/obd/#", f"homeassistant/sensor/{HUB}/#") as heard, \
            running_job(settings, HUB, tmp_path, ObdJob, job_config(elm, watch={"RPM": 10, "SPEED": 10})):
        await heard.wait(on(f"{home}/{HUB}/obd/status", "connected"))
        _, raw, _ = await heard.wait(on(f"{home}/{HUB}/obd/RPM"))
        rpm = json.loads(raw)
        assert rpm["unit"] == "revolutions_per_minute" and isinstance(rpm["value"], float)
        assert rpm["command"] == {"name": "RPM", "desc": "Engine RPM"}
        assert abs(rpm["time"] - time.time()) < 5
        _, raw, _ = await heard.wait(on(f"{home}/{HUB}/obd/SPEED"))
        assert json.loads(raw)["unit"] == "kilometer_per_hour"
        # Discovery topics have no <home>: other tests' retained ones may come first.
        _, raw, _ = await heard.wait(lambda t, p: t == f"homeassistant/sensor/{HUB}/obd_rpm/config"
                                     and json.loads(p)["state_topic"] == f"{home}/{HUB}/obd/RPM")
        entity = json.loads(raw)
        assert entity["unit_of_measurement"] == "rpm"
        assert entity["value_template"] == "{{ value_json.value }}"
        _, raw, _ = await heard.wait(on(f"{home}/{HUB}/obd/dtc"))
        assert json.loads(raw) == []  # the emulated car stores no trouble codes
        await asyncio.sleep(1.0)
        # 10 answers/s each, asked for: the rate holds (generous margins: the machine is shared).
        assert 3 <= heard.count(f"{home}/{HUB}/obd/RPM") <= 30


async def request(client: FleetClient, heard: Listener, verb: str, body: dict[str, Any] | None,
                  reply_to: str | None, correlation: bytes | None = None) -> dict[str, Any]:
    home = client.settings.home
    await client.publish(f"{home}/{HUB}/obd/api/{verb}", json.dumps(body) if body is not None else "", qos=1,
                         response_topic=reply_to, correlation=correlation)
    want = (body or {}).get("id")
    _, raw, props = await heard.wait(
        lambda t, p: t == (reply_to or f"{home}/{HUB}/obd/reply") and json.loads(p).get("id") == want)
    if correlation is not None:
        assert props.CorrelationData == correlation
    return json.loads(raw)


async def test_api_verbs_over_mqtt(settings: BrokerSettings, tmp_path: Path, elm: Emulator) -> None:
    home = settings.home
    mine = f"{home}/tester/replies"
    async with listening(settings, f"{home}/{HUB}/obd/#", mine) as heard, \
            running_job(settings, HUB, tmp_path, ObdJob, job_config(elm)) as job:
        client = heard.client
        assert client.is_v5
        await heard.wait(on(f"{home}/{HUB}/obd/status", "connected"))

        r = await request(client, heard, "watch", {"command": "COOLANT_TEMP", "rate": 20, "id": "w1"}, mine, b"c-1")
        assert r == {"id": "w1", "verb": "watch", "ok": True, "result": {"watching": {"COOLANT_TEMP": 20.0}}}
        _, raw, _ = await heard.wait(on(f"{home}/{HUB}/obd/COOLANT_TEMP"))
        assert json.loads(raw)["unit"] == "degree_Celsius"

        r = await request(client, heard, "unwatch", {"command": "COOLANT_TEMP", "id": "u1"}, mine, b"c-2")
        assert r["ok"] and r["result"] == {"watching": {}}
        await asyncio.sleep(1.0)  # answers already on their way may still land
        before = heard.count(f"{home}/{HUB}/obd/COOLANT_TEMP")
        await asyncio.sleep(0.7)
        assert heard.count(f"{home}/{HUB}/obd/COOLANT_TEMP") == before

        r = await request(client, heard, "query", {"command": "SPEED", "id": "q1"}, mine, b"c-3")
        assert r["ok"] and r["result"]["unit"] == "kilometer_per_hour"
        assert r["result"]["command"]["name"] == "SPEED"
        r = await request(client, heard, "query", {"command": "STATUS", "id": "q2"}, None)
        assert r["ok"] and r["result"]["unit"] is None and "MIL" in r["result"]["value"]  # plain JSON

        r = await request(client, heard, "query", {"command": "O2_SENSORS", "id": "q3"}, None)
        assert r["ok"] and r["result"]["unit"] is None and isinstance(r["result"]["value"], list)
        stats = job.stats()
        assert stats["published"] >= 1 and stats["rss"] > 1_000_000

        r = await request(client, heard, "supported_commands", {"id": "s1"}, mine, b"c-4")
        names = {c["name"] for c in r["result"]}
        assert {"RPM", "SPEED", "COOLANT_TEMP"} <= names
        r = await request(client, heard, "supports", {"command": "RPM", "id": "s2"}, None)
        assert r["result"] is True
        r = await request(client, heard, "status", {"id": "st"}, None)
        assert r["result"]["status"] == "connected"

        # Unknown names and bad requests get an error reply, and the job goes on.
        r = await request(client, heard, "query", {"command": "RMP", "id": "bad1"}, mine, b"c-5")
        assert r == {"id": "bad1", "verb": "query", "ok": False, "error": "unknown command RMP (did you mean RPM?)"}
        r = await request(client, heard, "watch", {"command": "FOO", "id": "bad2"}, None)
        assert not r["ok"] and r["error"].startswith("unknown command FOO")
        r = await request(client, heard, "frobnicate", {"id": "bad3"}, None)
        assert not r["ok"] and r["error"].startswith("unknown verb frobnicate")
        await client.publish(f"{home}/{HUB}/obd/api/query", "{not json", qos=1)
        _, raw, _ = await heard.wait(lambda t, p: t == f"{home}/{HUB}/obd/reply" and b"not JSON" in p)
        assert json.loads(raw)["ok"] is False
        r = await request(client, heard, "query", {"command": "RPM", "id": "after"}, None)
        assert r["ok"]


async def test_trouble_codes_published_when_they_change(settings: BrokerSettings, tmp_path: Path) -> None:
    home = settings.home
    dtc = f"{home}/{HUB}/obd/dtc"
    with Emulator(tmp_path / "elm", dtcs=("02", "0143", "0196")) as elm:
        async with listening(settings, f"{home}/{HUB}/obd/#") as heard, \
                running_job(settings, HUB, tmp_path, ObdJob, job_config(elm, dtc_interval=0.3)):
            _, raw, _ = await heard.wait(on(dtc))
            assert json.loads(raw) == [["P0143", "O2 Sensor Circuit Low Voltage"],
                                       ["P0196", "Engine Oil Temperature Sensor Range/Performance"]]
            await asyncio.sleep(1.0)
            assert heard.count(dtc) == 1  # read three times more, unchanged: not published again
            r = await request(heard.client, heard, "query", {"command": "CLEAR_DTC", "id": "clear"}, None)
            assert r["ok"] and r["result"]["value"] is None
            _, raw, _ = await heard.wait(on(dtc, "[]"))
            assert heard.count(dtc) == 2


async def test_serial_port(settings: BrokerSettings, tmp_path: Path) -> None:
    """A serial adapter (a USB one, or Bluetooth bound to /dev/rfcomm0): the emulator on a pty."""
    home = settings.home
    with Emulator(tmp_path / "elm", pty=True) as elm:
        assert elm.url.startswith("/dev/")
        async with listening(settings, f"{home}/{HUB}/obd/#") as heard, \
                running_job(settings, HUB, tmp_path, ObdJob, job_config(elm, watch={"RPM": 10})):
            _, raw, _ = await heard.wait(on(f"{home}/{HUB}/obd/RPM"))
            assert json.loads(raw)["unit"] == "revolutions_per_minute"


async def test_adapter_gone_and_back(settings: BrokerSettings, tmp_path: Path, elm: Emulator) -> None:
    home = settings.home
    status = f"{home}/{HUB}/obd/status"
    async with listening(settings, f"{home}/{HUB}/obd/#") as heard, \
            running_job(settings, HUB, tmp_path, ObdJob, job_config(elm, watch={"RPM": 20})):
        await heard.wait(on(f"{home}/{HUB}/obd/RPM"))
        elm.stop()
        await heard.wait(on(status, "disconnected"))
        await asyncio.sleep(1.5)  # a few reconnect attempts fail meanwhile
        gone = len(heard.seen)
        elm.start()  # the same port: the car is back
        await heard.wait(on(status, "connected"), after=gone)
        await heard.wait(on(f"{home}/{HUB}/obd/RPM"), after=len(heard.seen))


@pytest.mark.slow
async def test_adapter_without_car_then_car(settings: BrokerSettings, tmp_path: Path) -> None:
    """The emulator's `engineoff` scenario: the adapter answers, the ECU does not (python-OBD takes ~5 s
    to say so). The car comes on the same port: the job goes from `no car` to `connected`."""
    home = settings.home
    status = f"{home}/{HUB}/obd/status"
    off = Emulator(tmp_path / "off", scenario="engineoff").start()
    try:
        async with listening(settings, f"{home}/{HUB}/obd/#") as heard, \
                running_job(settings, HUB, tmp_path, ObdJob, job_config(off, watch={"RPM": 5})):
            await heard.wait(on(status, "no car"), timeout=30)
            assert heard.count(f"{home}/{HUB}/obd/RPM") == 0
            off.stop()
            with Emulator(tmp_path / "on", port=off.port):
                await heard.wait(on(f"{home}/{HUB}/obd/RPM"), timeout=30)
                await heard.wait(on(status, "connected"))
    finally:
        off.stop()


async def test_key_off_stops_polling(settings: BrokerSettings, tmp_path: Path, elm: Emulator) -> None:
    home = settings.home
    rpm = f"{home}/{HUB}/obd/RPM"
    async with listening(settings, f"{home}/{HUB}/obd/#") as heard, \
            running_job(settings, HUB, tmp_path, ObdJob, job_config(elm, watch={"RPM": 20})):
        await heard.wait(on(rpm))
        await heard.client.publish(f"{home}/{HUB}/ignition", "OFF", qos=1, retain=True)
        await heard.wait(on(f"{home}/{HUB}/obd/status", "sleeping"))
        await asyncio.sleep(1.0)  # answers already on their way may still land
        before = heard.count(rpm)
        await asyncio.sleep(1.0)
        assert heard.count(rpm) == before
        await heard.client.publish(f"{home}/{HUB}/ignition", "ON", qos=1, retain=True)
        await heard.wait(on(f"{home}/{HUB}/obd/status", "connected"))
        await asyncio.sleep(0.5)
        assert heard.count(rpm) > before


async def test_low_battery_stops_polling(settings: BrokerSettings, tmp_path: Path, elm: Emulator) -> None:
    home = settings.home
    rpm = f"{home}/{HUB}/obd/RPM"
    # The emulator reports about 13 V: a 20 V threshold plays a flat battery.
    config = job_config(elm, watch={"RPM": 20}, low_voltage=20, voltage_interval=0.5)
    async with listening(settings, f"{home}/{HUB}/obd/#") as heard, \
            running_job(settings, HUB, tmp_path, ObdJob, config):
        await heard.wait(on(f"{home}/{HUB}/obd/status", "low battery"))
        await asyncio.sleep(1.0)  # answers already on their way may still land
        before = heard.count(rpm)
        await asyncio.sleep(1.0)
        assert heard.count(rpm) == before


def test_config_check_names_the_place() -> None:
    text = "obd: {\n  port: socket://127.0.0.1:1\n  watch: {\n    RMP: 2\n    SPEED: -1\n  }\n  lowvoltage: 11\n}\n"
    doc = loads(text, "hub.hjson")
    issues = [str(i) for i in ObdJob.check(doc, ("obd",))]
    assert "hub.hjson:4:5: obd.watch.RMP: unknown command RMP (did you mean RPM?)" in issues
    assert "hub.hjson:5:5: obd.watch.SPEED: must be a number, 0 or more" in issues
    assert "hub.hjson:7:3: obd.lowvoltage: unknown key (did you mean low_voltage?)" in issues
    assert len(issues) == 3
    assert [str(i) for i in ObdJob.check(loads("obd: {watch: {}}", "h"), ("obd",))] == \
        ["h:1:1: obd: missing `port`: the adapter's serial device or socket://host:port"]
