"""Security end to end (issue 13), on a real Mosquitto run with the files `fleet broker credentials` makes
(a user per device and role, the ACL of docs/PROTOCOL.md section 9) and a TLS listener from
`make_tls`'s CA. Nodes are real virtual nodes (pysmartnode on the MicroPython unix port) that carry their
login, CA and config key in their own config.py, as a bundle delivers them; configs come from the real
config server, signed; the hub is the real HubService. Home Assistant cannot run here: a host client
logged in as its role (`fleet-homeassistant`) does what HA does on MQTT (birth message, discovery,
state, commands)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from config_server.pieces import parse_version
from config_server.server import ConfigServer, ServerOptions
from fleet import topics
from fleet.broker import Mosquitto, TLSFiles
from fleet.errors import BrokerError
from fleet.mqtt import BrokerSettings, FleetClient
from fleet.security import ADMIN_USER, HA_USER, SERVER_USER, Credentials, make_credentials, make_tls
from fleet.vnode import VirtualNode
from tests.hub_helpers import running_hub
from tests.nodeproto import ONE_RELAY_DEVICE as DEVICE
from tests.nodeproto import Observer, make_fs, pieces, relay_config

A, B, HUB = "node-a", "node-b", "car"

HUB_CONFIG = """
id: car
jobs: ["rules"]
rules: {
  door_light: {
    on: { topic: "{home}/node-b/door", payload: "open" }
    do: [
      {
        publish: "{home}/node-a/lamp/set", payload: "ON"
        reply: "{home}/node-a/lamp", reply_payload: "ON", timeout: 10
      }
    ]
  }
}
"""

# Firmware gone bad on node A, with A's own login: it tries to read B's config, forge B's state, ack and
# config, and command B. It runs on A's real MQTT client, so every attempt goes out as A's would.
SNOOP = '''
from pysmartnode.component import Component


class Snoop(Component):
    def __init__(self, name, victim):
        super().__init__(name, discover=False)
        self.victim = self.node.home + "/" + victim
        self.start(self._try)

    async def _try(self):
        n = self.node
        await n.wait_connected()
        await n.subscribe(self.victim + "/config", self._got)
        await n.subscribe(self.victim + "/lamp", self._got)
        await n.publish(self.victim + "/lamp", b"ON", True, 1)
        await n.publish(self.victim + "/lamp/set", b"ON", False, 1)
        await n.publish(self.victim + "/config", b'{"v": "99-00000000", "unchanged": true}', False, 1)
        await n.publish(n.home + "/config/ack/" + self.victim.split("/")[-1], b'{"v": "1-x", "state": "applied"}',
                        False, 1)
        self.log.info("tried everything on " + self.victim)

    async def _got(self, topic, msg, retained):
        self.log.error("SNOOPED %s: %d bytes" % (topic, len(msg)))
'''


@dataclass
class Fleet:
    """A fleet's credentials (from `make_credentials`), its CA, and a Mosquitto run with both."""

    home: str
    devices: Path
    out: Path
    creds: Credentials
    tls: dict[str, Path]
    broker: Mosquitto

    def settings(self, user: str | None = None) -> BrokerSettings:
        """The broker over TLS, verified against the fleet's CA, logged in as `user` (None: anonymous)."""
        base = BrokerSettings(self.broker.tls_url, self.home, ca=str(self.tls["ca"]))
        return base.with_user(user, self.creds.passwords[user]) if user else base

    def node(self, dev: str, fs: Path, files: dict[str, Any] | None = None, login: str | None = "own",
             broker: Mosquitto | None = None, ca_option: bool = False) -> VirtualNode:
        """Virtual node `dev` whose config.py holds what its bundle would: its CA, its config key, and the
        login of `login` ("own": its own; None: none). `files` are more files for its filesystem. With
        `ca_option` the CA comes as `fleet node run --ca` gives it instead."""
        user = dev if login == "own" else login
        lines = [f"CONFIG_KEY = {bytes.fromhex(self.creds.keys[dev])!r}"]
        if not ca_option:
            lines.append("MQTT_TLS = {'ca': 'ca.crt'}")
        if user:
            lines += [f"MQTT_USER = {user!r}", f"MQTT_PASSWORD = {self.creds.passwords[user]!r}"]
        files = dict(files or {})
        files["config.py"] = "\n".join(lines) + "\n" + str(files.get("config.py", ""))
        fs = make_fs(fs, files)
        shutil.copyfile(self.tls["ca"], fs / "ca.crt")
        # FLEET_BROKER names the broker only: the login comes from config.py, as on a board.
        ca = str(self.tls["ca"]) if ca_option else None
        return VirtualNode(fs, dev, BrokerSettings((broker or self.broker).tls_url, self.home, ca=ca))

    def server(self, tmp_path: Path) -> ConfigServer:
        options = ServerOptions(devices=self.devices, state=tmp_path / "state.sqlite", keys=self.out / "keys",
                                server_id="e2e", poll=0.1, lease_ttl=1.5, flush_every=0.05)
        return ConfigServer(self.settings(SERVER_USER), options)


@pytest.fixture
def fleet(mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path, home: str,
          request: pytest.FixtureRequest) -> Fleet:
    """Two nodes and a hub; certificates with EC keys, or RSA ones when parametrized with "rsa"."""
    devices = tmp_path / "devices"
    devices.mkdir()
    for dev in (A, B):
        (devices / f"{dev}.hjson").write_text(DEVICE)
    out = tmp_path / "credentials"
    creds = make_credentials(devices, out, home, hubs=[HUB])
    tls = make_tls(tmp_path / "tls", ["localhost", "127.0.0.1"], rsa=getattr(request, "param", "ec") == "rsa")
    broker = mosquitto_factory(password_file=str(out / "mosquitto.passwd"), acl_file=str(out / "mosquitto.acl"),
                               tls=TLSFiles(str(tls["ca"]), str(tls["cert"]), str(tls["key"])))
    return Fleet(home, devices, out, creds, tls, broker)


@pytest.fixture
async def nodes() -> AsyncIterator[list[VirtualNode]]:
    """Virtual nodes a test starts; stopped at its end."""
    started: list[VirtualNode] = []
    yield started
    for vn in started:
        await vn.stop()


async def start(nodes: list[VirtualNode], vn: VirtualNode) -> VirtualNode:
    nodes.append(vn)
    return await vn.__aenter__()


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """The first true value `check()` returns, polled every 0.1 s."""
    for _ in range(int(timeout * 10)):
        if got := check():
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"still false after {timeout} s: {check()!r}")


def seen(obs: Observer, topic: str) -> list[bytes]:
    return [p for t, p, _ in obs.msgs if t == topic]


async def test_a_node_cannot_touch_another(fleet: Fleet, nodes: list[VirtualNode], tmp_path: Path) -> None:
    h = fleet.home
    request = json.dumps({"v": None, "platform": "unix", "max": 1024})
    with pytest.raises(BrokerError):  # anonymous clients are refused
        async with FleetClient(fleet.settings(), timeout=3):
            pass
    async with fleet.server(tmp_path), Observer(fleet.settings(ADMIN_USER), "#") as admin, \
            Observer(fleet.settings(B), f"{h}/{B}/#") as b:
        # Node A runs its own code (no server config): a relay and the snoop.
        snoop = await start(nodes, fleet.node(A, tmp_path / A, {
            "snoop.py": SNOOP, "config.py": "RECEIVE_CONFIG = False\n",
            "local_components.py": f"import parts, snoop\nparts.Relay('lamp', 5)\nsnoop.Snoop('snoop', {B!r})\n"}))
        # A's login in a node that calls itself B: the whole node runtime speaking as B.
        impostor = await start(nodes, fleet.node(B, tmp_path / "impostor", {"components.json": relay_config("lamp")},
                                                 login=A))
        await admin.wait(topics.log(h, "info", A), lambda p: b"tried everything" in p)
        await impostor.wait_for("connected to localhost")
        # B asks for its config twice: the server answers on B's config topic, which B reads …
        await b.publish(topics.config_request(h, B), request)
        await b.wait(topics.config_reply(h, B))
        # … and a host client logged in as A tries what the snoop tried.
        async with FleetClient(fleet.settings(A), "a-by-hand") as a:
            await a.subscribe(f"{h}/{B}/#")
            await a.subscribe(f"{h}/+/config")
            await a.publish(topics.state(h, B, "lamp"), "ON", qos=1, retain=True)
            await a.publish(topics.command(h, B, "lamp"), "ON", qos=1)
            await a.publish(topics.command(h, B, "cmd"), "restart", qos=1)
            await b.publish(topics.config_request(h, B), request)
            got: list[str] = []

            async def pull() -> None:
                async for m in a.messages:
                    got.append(m.topic.value)

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pull(), 1.5)
        assert got == []
        firsts = [p for p in seen(b, topics.config_reply(h, B)) if json.loads(p.split(b"\n", 1)[0])["i"] == 0]
        assert len(firsts) == 2  # both answers reached B
    # Nothing sent under B's name by A's login reached anyone: what is there is B's and the server's.
    reply = topics.config_reply(h, B)
    genuine = {(topics.config_request(h, B), request.encode()), *((reply, p) for p in seen(b, reply))}
    about_b = [(t, p) for t, p, _ in admin.msgs if B in t.split("/")]
    assert about_b and [(t, p) for t, p in about_b if (t, p) not in genuine] == []
    # … and neither A's snoop nor the impostor got any of B's config or state.
    assert "SNOOPED" not in snoop.output and "config 1-" not in impostor.output, snoop.output + impostor.output
    assert seen(admin, topics.status(h, A))[-1:] == [b"online"]  # while A itself was connected all along


# The hub logs in to the home broker itself, or (as in a car) runs its own Mosquitto bridged home
# with its login: then the bridge reads the CA and the password, as the broker's own user.
BRIDGED = 'local_broker: { enabled: true, port: 0 }\nbridge: { restart: [1, 2] }\n'


@pytest.mark.parametrize("hub_link", ["direct", "bridged"])
async def test_every_role_works_end_to_end_under_the_acl(fleet: Fleet, nodes: list[VirtualNode], tmp_path: Path,
                                                        hub_link: str) -> None:
    h = fleet.home
    lamp, lamp_set = topics.state(h, A, "lamp"), topics.command(h, A, "lamp")
    hub_config = HUB_CONFIG + (BRIDGED if hub_link == "bridged" else "")
    async with fleet.server(tmp_path) as server, Observer(fleet.settings(HA_USER)) as ha, \
            running_hub(hub_config, fleet.settings(HUB), tmp_path / "hub") as hub, \
            FleetClient(fleet.settings(B), "node-b-by-hand") as b:
        await ha.publish("homeassistant/status", "online", retain=True)  # HA's birth message, as HA sends it
        v1 = server.registry.served[A].v
        await start(nodes, fleet.node(A, tmp_path / A))
        # The node takes its signed config from the server and acks; the server, under its own login,
        # reads the acks, the node's status, info and log lines.
        await ha.wait_json(topics.config_ack(h, A), lambda d: d == {"v": v1, "state": "applied", "failed": {}})
        row = await until(lambda: (r := server.state.device(A)) and r["ack_state"] == "applied" and r["info"] and r)
        assert row["acked"] == v1 and row["status"] == "online"
        assert await until(lambda: server.state.logs(A))
        # Home Assistant reads discovery and state.
        disc = await ha.wait_json(topics.discovery("switch", A, "lamp"))
        assert disc["command_topic"] == lamp_set and disc["state_topic"] == lamp
        await ha.wait(lamp, lambda p: p == b"OFF")
        # The hub drives the node through a rule: B's door opens, the hub switches A's lamp on.
        if hub_link == "bridged":
            await ha.wait(f"{h}/{HUB}/bridge", lambda p: p == b"1")
            assert hub.local is not None  # its config holds the hub's password: for the broker's user only
            conf = hub.local.log_path.with_name("mosquitto.conf")
            assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and fleet.creds.passwords[HUB] in conf.read_text()
        m = ha.mark()
        await b.publish(topics.state(h, B, "door"), "open", qos=1)
        await ha.wait(lamp_set, lambda p: p == b"ON", start=m)
        await ha.wait(lamp, lambda p: p == b"ON", start=m)
        report = await ha.wait_json(f"{h}/{HUB}/rules/door_light", lambda d: d["event"] == "finished", start=m)
        assert report["result"] == "ok"
        # Home Assistant commands it back off.
        m = ha.mark()
        await ha.publish(lamp_set, "OFF")
        await ha.wait(lamp, lambda p: p == b"OFF", start=m)
        await ha.wait(topics.sim(h, A, "pin5", "level"), lambda p: p == b"0", start=m)
    # The configs went to the node only: HA, which reads every other fleet topic, saw none of them.
    assert not [t for t, _, _ in ha.msgs if t.startswith(f"{h}/") and t.endswith("/config")]


@contextlib.asynccontextmanager
async def server_command(fleet: Fleet, tmp_path: Path) -> AsyncIterator[None]:
    """`fleet server run --keys …` as docs/SECURITY.md has it: the login in FLEET_BROKER, the CA in
    FLEET_CA. Ends with SIGTERM (a clean stop) when the block does."""
    s = fleet.settings(SERVER_USER)
    env = {**os.environ, "FLEET_BROKER": s.url, "FLEET_CA": str(s.ca), "FLEET_HOME": fleet.home}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.cli", "server", "run", "--devices", str(fleet.devices),
        "--keys", str(fleet.out / "keys"), "--state", str(tmp_path / "state.sqlite"), "--server-id", "cli",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        await proc.wait()


async def test_only_the_servers_configs_are_taken(fleet: Fleet, nodes: list[VirtualNode], tmp_path: Path) -> None:
    h = fleet.home
    ack, reply, errors = topics.config_ack(h, A), topics.config_reply(h, A), topics.log(h, "error", A)
    async with Observer(fleet.settings(ADMIN_USER)) as admin, server_command(fleet, tmp_path):
        await admin.wait(f"{h}/config/server/cli", lambda p: p == b"online")
        vn = await start(nodes, fleet.node(A, tmp_path / A))
        v1 = (await admin.wait_json(ack, lambda d: d["state"] == "applied"))["v"]
        genuine_v1 = [p for p in seen(admin, reply) if json.loads(p.split(b"\n", 1)[0])["v"] == v1]
        assert json.loads(genuine_v1[0].split(b"\n", 1)[0])["sig"].startswith("hmac-sha256:")
        # A new config from the server: pushed, taken.
        (fleet.devices / f"{A}.hjson").write_text(DEVICE.replace("pin: 5", "pin: 6"))
        v2 = (await admin.wait_json(ack, lambda d: d["v"] != v1 and d["state"] == "applied"))["v"]
        counter = parse_version(v2)[0]
        assert counter is not None

        async def refused(send: list[bytes], v: str, why: str) -> None:
            m = admin.mark()
            for p in send:
                await admin.publish(reply, p)
            got = await admin.wait_json(ack, lambda d: d["v"] == v, start=m)
            assert got["state"] == "refused" and why in " ".join(got["errors"]), got
            await admin.wait(errors, lambda p: why.encode() in p, start=m)

        # Someone with broker access (here the admin login) replays the server's own, older config …
        await refused(genuine_v1, v1, "replay")
        # … and sends a newer one of their own: signed with a guessed key, or with none.
        cfg = {"_order": ["lamp"], "lamp": {"package": ".machine.relay", "component": "Relay",
                                            "constructor_args": {"pin": 13}}}
        v, forged = pieces(cfg, counter + 1, key=b"guessed", device=A)
        await refused(forged, v, "signature does not match")
        v, unsigned = pieces(cfg, counter + 2)
        await refused(unsigned, v, "not signed")
        # The server's config stays in force: no restart, v2 reported and running.
        m = admin.mark()
        await admin.publish(topics.command(h, A, "cmd"), "info")
        assert (await admin.wait_json(topics.info(h, A), lambda d: True, start=m))["config"] == v2
        assert vn.exits == [3, 3]  # one restart per config applied, none for the refused ones
        await admin.publish(topics.command(h, A, "lamp"), "ON")
        await admin.wait(topics.sim(h, A, "pin6", "level"), lambda p: p == b"1", start=m)


@pytest.mark.parametrize("fleet", ["ec", "rsa"], indirect=True)  # RSA: what ESP8266 nodes need
async def test_a_node_verifies_the_broker_certificate(fleet: Fleet, nodes: list[VirtualNode], tmp_path: Path,
                                                      mosquitto_factory: Callable[..., Mosquitto]) -> None:
    h = fleet.home
    other = make_tls(tmp_path / "other-ca", ["localhost", "127.0.0.1"])
    impostor = mosquitto_factory(password_file=str(fleet.out / "mosquitto.passwd"),
                                 acl_file=str(fleet.out / "mosquitto.acl"),
                                 tls=TLSFiles(str(other["ca"]), str(other["cert"]), str(other["key"])))
    async with Observer(fleet.settings(ADMIN_USER)) as admin:
        good = await start(nodes, fleet.node(A, tmp_path / A, {"config.py": "RECEIVE_CONFIG = False\n"},
                                             ca_option=True))
        fooled = await start(nodes, fleet.node(B, tmp_path / B, {"config.py": "RECEIVE_CONFIG = False\n"},
                                               broker=impostor))
        anonymous = await start(nodes, fleet.node(B, tmp_path / "anon", {"config.py": "RECEIVE_CONFIG = False\n"},
                                                  login=None))
        await admin.wait(topics.status(h, A), lambda p: p == b"online")
        await good.wait_for(r"connected to localhost:\d+")
        line = (await fooled.wait_for(rf"cannot connect to localhost:{impostor.tls_port}: .*")).group(0)
        assert line.endswith("ValueError The certificate is not correctly signed by the trusted CA"), line
        line = (await anonymous.wait_for(rf"cannot connect to localhost:{fleet.broker.tls_port}: .*")).group(0)
        assert "not authorised" in line, line
    assert "connected to" not in fooled.output + anonymous.output


def test_esp8266_tls_runs_unverified_and_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ESP8266 can run here: a stand-in with exactly the `ssl` API of its axTLS build
    (MicroPython's extmod/modssl_axtls.c: SSLContext with load_cert_chain and wrap_socket, no CERT_*
    constants, no verify_mode) shows the node client builds its context there instead of failing."""
    from pysmartnode import mqtt_tls

    class AxtlsContext:
        __slots__ = ("chain",)  # like the C type: setting verify_mode would raise AttributeError

        def __init__(self, protocol: int) -> None:
            self.chain: tuple[bytes, bytes] | None = None

        def load_cert_chain(self, cert: bytes, key: bytes) -> None:
            self.chain = (cert, key)

    axtls = type(sys)("ssl")
    axtls.SSLContext, axtls.PROTOCOL_TLS_CLIENT = AxtlsContext, 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ssl", axtls)
    files = make_tls(tmp_path / "tls", ["localhost"])
    logged: list[tuple[str, str]] = []
    ctx = mqtt_tls.context({"ca": str(files["ca"]), "cert": str(files["client_cert"]), "key": str(files["client_key"])},
                           lambda level, msg: logged.append((level, msg)))
    assert isinstance(ctx, AxtlsContext) and ctx.chain and ctx.chain[0].startswith(b"\x30")  # DER
    assert logged == [("warning", "TLS without certificate verification: this board's TLS cannot verify the broker")]


async def test_a_removed_device_can_no_longer_log_in(fleet: Fleet, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    (fleet.devices / f"{B}.hjson").unlink()
    again = make_credentials(fleet.devices, fleet.out, fleet.home, hubs=[HUB])
    assert again.passwords[B] == fleet.creds.passwords[B]  # kept, should B come back
    broker = mosquitto_factory(password_file=str(fleet.out / "mosquitto.passwd"),
                               acl_file=str(fleet.out / "mosquitto.acl"))
    base = BrokerSettings(broker.url, fleet.home)
    async with FleetClient(base.with_user(A, fleet.creds.passwords[A])):
        pass
    with pytest.raises(BrokerError):
        async with FleetClient(base.with_user(B, fleet.creds.passwords[B]), timeout=3):
            pass
