"""The config server against a real Mosquitto: a Python client speaking the node's side of
docs/PROTOCOL.md section 4 asks, takes the pieces, reassembles and acks; file edits are pushed; invalid
edits are refused; state and versions survive a restart; two servers share the answering."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from config_server.pieces import Reassembler, Received, parse_version, signature
from config_server.server import ConfigServer, ServerOptions
from config_server.state import State
from fleet import topics
from fleet.mqtt import BrokerSettings, FleetClient

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "devices"


class NodeSide:
    """The node's side of the exchange, in Python: request, pieces, reassembly, ack."""

    def __init__(self, settings: BrokerSettings, device: str, max_bytes: int = 1024) -> None:
        self.settings, self.device, self.max = settings, device, max_bytes
        self.client = FleetClient(settings, f"node-{device}")
        self.assembler = Reassembler()

    async def __aenter__(self) -> NodeSide:
        await self.client.__aenter__()
        await self.client.subscribe(topics.config_reply(self.settings.home, self.device))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__()

    async def online(self) -> None:
        await self.client.publish(topics.status(self.settings.home, self.device), "online", qos=1, retain=True)

    async def ask(self, v: str | None = None) -> None:
        body = {"v": v, "platform": "unix", "max": self.max, "fw": "0.1.0"}
        await self.client.publish(topics.config_request(self.settings.home, self.device), json.dumps(body), qos=1)

    async def receive(self, timeout: float = 5.0) -> Received:
        async def whole() -> Received:
            async for msg in self.client.messages:
                got = self.assembler.feed(bytes(msg.payload))  # type: ignore[arg-type]
                if got is not None:
                    return got
            raise AssertionError("message stream ended")

        return await asyncio.wait_for(whole(), timeout)

    async def request(self, v: str | None = None) -> Received:
        await self.ask(v)
        return await self.receive()

    async def ack(self, v: str, state: str, **extra: Any) -> None:
        await self.client.publish(topics.config_ack(self.settings.home, self.device),
                                  json.dumps({"v": v, "state": state, **extra}), qos=1)


@pytest.fixture
def devices(tmp_path: Path) -> Path:
    folder = tmp_path / "devices"
    shutil.copytree(EXAMPLES, folder)
    return folder


def options(tmp_path: Path, devices: Path, server_id: str = "one") -> ServerOptions:
    return ServerOptions(devices=devices, state=tmp_path / "state.sqlite", server_id=server_id, poll=0.1,
                         lease_ttl=1.5, flush_every=0.05)


async def until(check: Any, timeout: float = 5.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        await asyncio.sleep(step)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


async def test_request_pieces_ack_and_unchanged(settings: BrokerSettings, tmp_path: Path, devices: Path) -> None:
    async with ConfigServer(settings, options(tmp_path, devices)) as server, \
            NodeSide(settings, "room", max_bytes=128) as node:
        served = server.registry.served["room"]
        got = await node.request()
        assert got.v == served.v and parse_version(got.v) == (1, served.assembled.hash8)
        assert got.order == ["ram", "stats", "i2c", "climate", "lamp"]  # the include's _order first
        assert got.settings == {"interval": 30, "info_interval": 600}
        assert got.components["climate"]["constructor_args"] == {"i2c": "i2c", "address": 118, "precision": 1}
        assert got.pieces > len(got.order) + 2  # `max: 128` split some bodies
        await node.ack(got.v, "accepted")
        await node.ack(got.v, "applied", failed={})
        again = await node.request(got.v)
        assert again.unchanged and again.v == got.v
        await until(lambda: (server.state.device("room") or {}).get("ack_state") == "applied")
        row = server.state.device("room")
        assert row is not None
        assert (row["sent"], row["acked"], row["holds"], row["fw"]) == (got.v, got.v, got.v, "0.1.0")
        assert (server.counters.replies, server.counters.unchanged, server.counters.acks) == (1, 1, 2)


async def test_edit_is_pushed_and_invalid_edit_refused(settings: BrokerSettings, tmp_path: Path, devices: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    async with ConfigServer(settings, options(tmp_path, devices)) as server, NodeSide(settings, "door") as node:
        first = await node.request()
        await node.ack(first.v, "applied")
        await node.online()
        await until(lambda: "door" in server.online and server.pusher)
        edit(devices / "door.hjson", "long_press: 1500", "long_press: 2500")
        pushed = await node.receive()
        assert parse_version(pushed.v)[0] == parse_version(first.v)[0] + 1  # type: ignore[index]
        assert pushed.components["bell"]["constructor_args"]["long_press"] == 2500
        await until(lambda: server.counters.pushes == 1)

        caplog.set_level(logging.ERROR, logger="config_server.registry")
        edit(devices / "door.hjson", "debounce: 30", "debounse: 30")
        await until(lambda: not server.registry.checked["door"].ok)
        [issue] = server.registry.checked["door"].issues
        assert str(issue) == (f"{devices}/door.hjson:13:9: bell.constructor_args.debounse: unknown argument"
                              " (did you mean debounce?)")
        assert str(issue) in caplog.text
        assert server.registry.served["door"].v == pushed.v  # the last valid version stays in service
        with pytest.raises(TimeoutError):
            await node.receive(timeout=0.8)  # nothing pushed
        assert (await node.request()).v == pushed.v
        await until(lambda: (server.state.device("door") or {}).get("error") == str(issue))

        edit(devices / "door.hjson", "debounse: 30", "debounce: 40")  # fixed: pushed again
        fixed = await node.receive()
        assert parse_version(fixed.v)[0] == parse_version(pushed.v)[0] + 1  # type: ignore[index]
        await until(lambda: (server.state.device("door") or {}).get("error") is None)


async def test_restart_keeps_state_and_versions_increase(settings: BrokerSettings, tmp_path: Path,
                                                          devices: Path) -> None:
    async with ConfigServer(settings, options(tmp_path, devices)) as server, NodeSide(settings, "room") as node:
        first = await node.request()
        await node.ack(first.v, "applied")
        await until(lambda: (server.state.device("room") or {}).get("acked") == first.v)
    edit(devices / "room.hjson", "pin: 26", "pin: 25")
    async with ConfigServer(settings, options(tmp_path, devices, "two")) as server, \
            NodeSide(settings, "room") as node:
        row = server.state.device("room")
        assert row is not None and (row["acked"], row["ack_state"]) == (first.v, "applied")
        second = await node.request(first.v)
        assert parse_version(second.v)[0] == parse_version(first.v)[0] + 1  # type: ignore[index]
    edit(devices / "room.hjson", "pin: 25", "pin: 26")  # back to the first content: still a new, higher counter
    async with ConfigServer(settings, options(tmp_path, devices, "three")) as server:
        assert parse_version(server.registry.served["room"].v)[0] == 3  # type: ignore[index]


@pytest.mark.slow
async def test_two_servers_answer_each_of_200_requests_once(settings: BrokerSettings, tmp_path: Path) -> None:
    folder = tmp_path / "devices"
    shutil.copytree(EXAMPLES / "include", folder / "include")
    door = (EXAMPLES / "door.hjson").read_text()
    ids = [f"node{i:02d}" for i in range(20)]
    for device in ids:
        (folder / f"{device}.hjson").write_text(door)
    async with ConfigServer(settings, options(tmp_path, folder, "a")) as a, \
            ConfigServer(settings, options(tmp_path, folder, "b")) as b:
        assert a.registry.served["node00"].v == b.registry.served["node00"].v  # one version, from the shared state
        v = {d: a.registry.served[d].v for d in ids}
        async with FleetClient(settings, "nodes") as nodes:
            await nodes.subscribe(f"{settings.home}/+/config")
            for device in ids:
                for _ in range(10):
                    await nodes.publish(topics.config_request(settings.home, device),
                                        json.dumps({"v": v[device], "max": 1024}), qos=1)
            got: Counter[str] = Counter()

            async def collect() -> None:
                async for msg in nodes.messages:
                    body = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                    assert body == {"v": v[msg.topic.value.split("/")[1]], "unchanged": True}
                    got[msg.topic.value.split("/")[1]] += 1
                    if sum(got.values()) == 200:
                        return

            await asyncio.wait_for(collect(), 20)
            with pytest.raises(TimeoutError):  # and no more than that
                await asyncio.wait_for(collect(), 1.0)
        assert got == {d: 10 for d in ids}
        assert a.counters.unchanged + b.counters.unchanged == 200
        assert a.counters.unchanged > 0 and b.counters.unchanged > 0  # both took a share
        assert a.pusher != b.pusher  # exactly one of them pushes


async def test_bad_input_is_logged_and_dropped(settings: BrokerSettings, tmp_path: Path, devices: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    home = settings.home
    async with ConfigServer(settings, options(tmp_path, devices)) as server, \
            NodeSide(settings, "room") as node, FleetClient(settings, "vandal") as vandal:
        bad = [
            (topics.config_request(home, "room"), b"{not json"),
            (topics.config_request(home, "room"), b"[1, 2]"),
            (topics.config_request(home, "room"), json.dumps({"v": 7}).encode()),
            (topics.config_request(home, "room"), json.dumps({"max": "big"}).encode()),
            (topics.config_request(home, "room"), b"{" + b" " * 100_000 + b"}"),
            (topics.config_request(home, "Bad-ID"), b"{}"),
            (topics.config_ack(home, "room"), json.dumps({"v": "99-deadbeef", "state": "accepted"}).encode()),
            (topics.config_ack(home, "room"), json.dumps({"v": "1-00000000", "state": "maybe"}).encode()),
            (topics.status(home, "room"), b"sleepy"),
            (topics.info(home, "room"), b"\xff\xfe"),
            (topics.log(home, "loud", "room"), b"hello"),
        ]
        for topic, payload in bad:
            await vandal.publish(topic, payload, qos=1)
        await vandal.publish(topics.config_request(home, "stranger"), b'{"v": null}', qos=1)
        await until(lambda: server.counters.dropped == len(bad))
        for reason in ("not JSON", "expected a JSON object", "v must be a version string", "max must be",
                       "100002 bytes is too large", "device id 'Bad-ID' must match",
                       "ack for version 99-deadbeef, which was never given to room", "state must be one of",
                       "status must be online or offline", "log level must be one of"):
            assert reason in caplog.text
        assert f"dropped a message on {topics.config_request(home, 'room')}: not JSON" in caplog.text
        await until(lambda: server.counters.unknown == 1)
        assert "unknown device stranger asked for its config" in caplog.text

        # The registry folder vanishes: the last valid configs stay in service; it comes back: all is well.
        devices.rename(tmp_path / "elsewhere")
        await until(lambda: server.registry.folder_missing)
        got = await node.request()
        assert got.v == server.registry.served["room"].v
        (tmp_path / "elsewhere").rename(devices)
        await until(lambda: not server.registry.folder_missing)
        assert "registry folder" in caplog.text
    await until(lambda: (State(tmp_path / "state.sqlite").device("stranger") or {}).get("unknown_requests") == 1)


async def test_logs_status_and_the_cli(settings: BrokerSettings, tmp_path: Path, devices: Path) -> None:
    home = settings.home
    async with ConfigServer(settings, options(tmp_path, devices)) as server, \
            NodeSide(settings, "thermostat") as node:
        got = await node.request()
        await node.ack(got.v, "refused", errors=["thermostat: no module named 'components.devices.thermostat'"])
        await node.online()
        await node.client.publish(topics.info(home, "thermostat"),
                                  json.dumps({"fw": "0.1.0", "platform": "unix", "config": got.v}), qos=1)
        for level, line in (("info", "+1.0s loader: loaded i2c"), ("error", "+2.0s climate: no ACK from 0x76")):
            await node.client.publish(topics.log(home, level, "thermostat"), line)
        await until(lambda: server.counters.logs == 2 and server.counters.acks == 1)
        await until(lambda: len(server.state.logs("thermostat")) == 2)
    state = str(tmp_path / "state.sqlite")
    fleet = [sys.executable, "-m", "fleet.cli", "server"]
    logs = subprocess.run([*fleet, "logs", "thermostat", "--level", "error", "--state", state],
                          capture_output=True, text=True, check=True)
    assert logs.stdout.strip().endswith("error    thermostat: +2.0s climate: no ACK from 0x76")
    assert "loaded i2c" not in logs.stdout
    table = subprocess.run([*fleet, "devices", "--devices", str(devices), "--state", state, "--json"],
                           capture_output=True, text=True, check=True)
    rows = {r["id"]: r for r in map(json.loads, table.stdout.splitlines())}
    assert rows["thermostat"]["status"] == "online"
    assert rows["thermostat"]["holds"] == f"{got.v} (current)"
    assert rows["thermostat"]["ack"] == f"{got.v} refused"
    assert rows["room"]["status"] == "never seen" and rows["room"]["file"] == "ok"
    plain = subprocess.run([*fleet, "devices", "--devices", str(devices), "--state", state],
                           capture_output=True, text=True, check=True)
    assert plain.stdout.splitlines()[0].split() == ["ID", "STATUS", "SEEN", "FW", "PLATFORM", "FILE", "HOLDS",
                                                    "SENT", "ACK"]


def test_log_retention_by_age_and_size(tmp_path: Path) -> None:
    state = State(tmp_path / "s.sqlite")
    now = time.time()
    state.add_logs([(now - 10 * 86400, "a", "info", "old")] + [(now, "a", "info", "x" * 60)] * 1000)
    assert state.prune_logs(max_age=86400, max_bytes=10**9, now=now) == 1
    state.prune_logs(max_age=86400, max_bytes=50_000, now=now)
    left = state.logs("a")
    assert 400 < len(left) < 500 and left[-1].line == "x" * 60  # the newest are kept


async def test_broker_restart_and_the_run_command(mosquitto_factory: Any, tmp_path: Path, devices: Path) -> None:
    broker = mosquitto_factory()
    settings = BrokerSettings(broker.url, "t-restart")
    async with ConfigServer(settings, options(tmp_path, devices)) as server:
        broker.restart()  # the server loses its link and comes back by itself
        async with NodeSide(settings, "door") as node:
            got = await asyncio.wait_for(_ask_until_answered(node), 15)
            assert got.v == server.registry.served["door"].v
    # `fleet server run` as a user starts it; SIGTERM stops it cleanly.
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "server", "run", "--devices", str(devices),
                             "--state", str(tmp_path / "cli.sqlite"), "--broker", broker.url, "--home", "t-cli"],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        while "config server" not in (line := await asyncio.to_thread(proc.stderr.readline)):
            assert line, "fleet server run ended before it was up"
        async with NodeSide(BrokerSettings(broker.url, "t-cli"), "room") as node:
            assert (await node.request()).order[-1] == "lamp"
    finally:
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0


async def _ask_until_answered(node: NodeSide) -> Received:
    while True:  # as a node does: ask, and ask again when no answer comes
        await node.ask()
        try:
            return await node.receive(timeout=1.0)
        except TimeoutError:
            continue


async def test_serves_under_the_fleet_acl(mosquitto_factory: Any, tmp_path: Path, devices: Path) -> None:
    """With the password and ACL files of `fleet broker credentials`, as the server's own user."""
    from fleet.security import SERVER_USER, Credentials

    home = "t-acl"
    creds = Credentials(home, nodes=["door"])
    creds.ensure()
    (tmp_path / "passwd").write_text(creds.password_file())
    (tmp_path / "acl").write_text(creds.acl_file())
    broker = mosquitto_factory(password_file=str(tmp_path / "passwd"), acl_file=str(tmp_path / "acl"))
    base = BrokerSettings(broker.url, home)
    server_settings = base.with_user(SERVER_USER, creds.passwords[SERVER_USER])
    async with ConfigServer(server_settings, options(tmp_path, devices)) as server, \
            NodeSide(base.with_user("door", creds.passwords["door"]), "door") as node:
        got = await node.request()
        await node.ack(got.v, "accepted")
        await node.client.publish(topics.log(home, "error", "door"), "+1.0s bell: stuck")
        await until(lambda: server.counters.acks == 1 and server.counters.logs == 1)


async def test_signed_configs_for_devices_with_a_key(settings: BrokerSettings, tmp_path: Path, devices: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    key = bytes(range(32))
    (keys / "room.key").write_text(key.hex())
    opts = options(tmp_path, devices)
    opts.keys = keys
    async with ConfigServer(settings, opts) as server, NodeSide(settings, "room") as room, \
            NodeSide(settings, "door") as door:
        got = await room.request()
        assert got.sig == signature(key, "room", got.v, server.registry.served["room"].assembled)
        assert (await door.request()).sig is None  # no key, no signature


@pytest.mark.slow
async def test_serves_on_the_embedded_broker(embedded_broker: Any, tmp_path: Path, devices: Path) -> None:
    """MQTT 3.1.1 only (amqtt): plain subscriptions instead of `$share`, the same exchange. Slow: amqtt
    never answers an MQTT 5 CONNECT that carries a Will, so FleetClient falls back only after its 10 s
    connect timeout."""
    settings = BrokerSettings(embedded_broker.url, "t-embedded")
    async with ConfigServer(settings, options(tmp_path, devices)) as server, NodeSide(settings, "door") as node:
        got = await node.request()
        assert got.v == server.registry.served["door"].v
        await node.ack(got.v, "applied")
        await until(lambda: server.counters.acks == 1)
