"""The foundation: both brokers, our client's topic filtering, the MicroPython runner, the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet import topics
from fleet.broker import EmbeddedBroker, Mosquitto, free_port, wait_port
from fleet.mqtt import BrokerSettings, FleetClient, Will
from fleet.upy import MicroPython

REPO = Path(__file__).resolve().parent.parent


async def next_message(client: FleetClient, timeout: float = 5.0):
    async def first():
        async for msg in client.messages:
            return msg
    return await asyncio.wait_for(first(), timeout)


async def pubsub_check(url: str, home: str) -> None:
    """QoS 0 and 1, a retained message and the Will, against the broker at `url`."""
    s = BrokerSettings(url, home)
    async with FleetClient(s, "sub") as sub, FleetClient(s, "pub") as pub:
        await sub.subscribe(f"{home}/a/#", qos=1)
        await pub.publish(f"{home}/a/q0", "zero", qos=0)
        assert (await next_message(sub)).payload == b"zero"
        await pub.publish(f"{home}/a/q1", "one", qos=1)
        msg = await next_message(sub)
        assert (msg.topic.value, msg.payload, msg.qos) == (f"{home}/a/q1", b"one", 1)
        await pub.publish(f"{home}/r/state", "ON", qos=1, retain=True)

    async with FleetClient(s, "late") as late:
        await late.subscribe(f"{home}/r/+")
        msg = await next_message(late)
        assert (msg.payload, msg.retain) == (b"ON", True)

    async with FleetClient(s, "watcher") as watcher:
        await watcher.subscribe(topics.status(home, "dev"))
        await connect_and_vanish(url, topics.status(home, "dev"), b"offline")
        msg = await next_message(watcher, timeout=8)
        assert (msg.topic.value, msg.payload) == (topics.status(home, "dev"), b"offline")


def _mqtt_str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


async def connect_and_vanish(url: str, will_topic: str, will_payload: bytes) -> None:
    """A 3.1.1 client with a retained QoS 1 Will that drops its socket without DISCONNECT, as a crash would."""
    s = BrokerSettings(url)
    body = (_mqtt_str(b"MQTT") + bytes([4, 0x04 | 0x08 | 0x20 | 0x02]) + (30).to_bytes(2, "big")
            + _mqtt_str(b"vanishing") + _mqtt_str(will_topic.encode()) + _mqtt_str(will_payload))
    reader, writer = await asyncio.open_connection(s.host, s.port)
    writer.write(bytes([0x10, len(body)]) + body)
    await writer.drain()
    assert (await reader.readexactly(4))[0] == 0x20  # CONNACK
    writer.transport.abort()


async def test_pubsub_on_mosquitto(mosquitto: Mosquitto, home: str) -> None:
    await pubsub_check(mosquitto.url, home)
    async with FleetClient(BrokerSettings(mosquitto.url, home)) as c:
        assert c.is_v5


async def test_pubsub_on_embedded_broker(embedded_broker: EmbeddedBroker, home: str) -> None:
    await pubsub_check(embedded_broker.url, home)
    async with FleetClient(BrokerSettings(embedded_broker.url, home)) as c:
        assert not c.is_v5  # amqtt knows only 3.1.1: the client fell back


async def test_will_client_does_not_wait_out_amqtt(embedded_broker: EmbeddedBroker, home: str) -> None:
    """amqtt never answers an MQTT 5 CONNECT that carries a Will: the client must not wait for it."""
    s = BrokerSettings(embedded_broker.url, home)
    t0 = time.monotonic()
    async with FleetClient(s, "with-will", will=Will(topics.status(home, "w")), timeout=5) as c:
        assert not c.is_v5
    assert time.monotonic() - t0 < 5  # no timeout waited out


async def test_foreign_messages_are_dropped(embedded_broker: EmbeddedBroker, home: str) -> None:
    """amqtt hands a new client retained messages matching *other* clients' subscriptions."""
    s = BrokerSettings(embedded_broker.url, home)
    async with FleetClient(s, "other") as other:
        await other.subscribe(f"{home}/secret/#")
        await other.publish(f"{home}/secret/x", "not for you", qos=1, retain=True)
        await asyncio.sleep(0.2)
        async with FleetClient(s, "mine") as mine:
            await mine.subscribe(f"{home}/mine/#")
            await other.publish(f"{home}/mine/x", "for you", qos=1)
            msg = await next_message(mine)
            assert msg.topic.value == f"{home}/mine/x"


def test_topic_matching() -> None:
    m = topics.matches
    assert m("a/#", "a") and m("a/#", "a/b/c") and m("a/+/c", "a/b/c") and m("#", "a")
    assert not m("a/+", "a/b/c") and not m("a/b", "a") and not m("+/x", "$SYS/x")
    assert m("$share/g/a/+", "a/b")
    assert topics.check_device_id("kitchen-1") is None
    assert "reserved" in (topics.check_device_id("log") or "")
    assert topics.check_device_id("Kitchen") is not None


def test_broker_settings_parse() -> None:
    s = BrokerSettings("mqtts://us%40er:p%3Ass@broker.lan:8884", "home")
    assert (s.tls, s.host, s.port, s.username, s.password) == (True, "broker.lan", 8884, "us@er", "p:ss")
    assert "p:ss" not in s.public_url


def test_micropython_runs_under_a_small_heap(upy, tmp_path: Path) -> None:
    runner: MicroPython = upy(fs=tmp_path / "board", heap="32K")
    (runner.fs / "lib").mkdir(parents=True)
    (runner.fs / "lib" / "helper.py").write_text("def hello():\n    return 'hello from lib'\n")
    code = ("import gc, sys, helper\nprint(helper.hello())\nprint(sys.implementation.name)\n"
            "gc.collect()\nprint('free', gc.mem_free())\n"
            "try:\n    b = bytearray(64 * 1024)\nexcept MemoryError:\n    print('MemoryError as expected')\n")
    out = runner.run_code(code)
    assert out.returncode == 0, out.stdout
    assert "hello from lib" in out.stdout and "micropython" in out.stdout
    free = int(out.stdout.split("free ")[1].split()[0])
    assert 0 < free < 32 * 1024
    assert "MemoryError as expected" in out.stdout


def test_fleet_help_lists_every_area() -> None:
    out = subprocess.run([sys.executable, "-m", "fleet.cli", "--help"], capture_output=True, text=True, check=True)
    for area in ("broker", "node", "server", "hub", "firmware", "sim"):
        assert area in out.stdout
    sub = subprocess.run([sys.executable, "-m", "fleet.cli", "broker", "run", "--help"],
                         capture_output=True, text=True, check=True)
    assert "--port" in sub.stdout


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_fleet_broker_run(kind: str, tmp_path: Path, home: str) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "broker", "run", "--port", str(port),
                             "--kind", kind, "--dir", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        wait_port("127.0.0.1", port, 15)
        asyncio.run(pubsub_check(f"mqtt://127.0.0.1:{port}", home))
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    assert kind in (proc.stdout.read() if proc.stdout else "")


def test_mosquitto_files_readable_by_broker_user(mosquitto_factory, tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "alice", "secret"], check=True)
    os.chmod(pw, 0o600)
    broker = mosquitto_factory(password_file=str(pw))

    async def check() -> None:
        async with FleetClient(BrokerSettings(broker.url.replace("//", "//alice:secret@"), "h")) as c:
            await c.publish("h/x", "1", qos=1)
        with pytest.raises(Exception, match="mqtt"):
            async with FleetClient(BrokerSettings(broker.url, "h")):
                pass

    asyncio.run(check())
