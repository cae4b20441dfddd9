"""Credentials, ACLs and TLS on a real Mosquitto (the host side of the security issue)."""

from __future__ import annotations

import asyncio
import contextlib
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.broker import TLSFiles
from fleet.errors import BrokerError
from fleet.mqtt import BrokerSettings, FleetClient
from fleet.security import ADMIN_USER, HA_USER, SERVER_USER, Credentials, make_credentials, make_tls, mosquitto_hash


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "u", "s3cret"], check=True)
    _, h = pw.read_text().strip().split(":", 1)
    _, _, iterations, salt, _ = h.split("$")
    import base64

    assert mosquitto_hash("s3cret", base64.b64decode(salt), int(iterations)) == h


@pytest.fixture
def fleet_creds(tmp_path: Path, home: str) -> tuple[Credentials, Path]:
    devices = tmp_path / "devices"
    devices.mkdir()
    for dev in ("alpha", "beta"):
        (devices / f"{dev}.hjson").write_text("{ name: x }\n")
    (devices / "secrets.hjson").write_text("{ wifi: x }\n")
    out = tmp_path / "creds"
    return make_credentials(devices, out, home, hubs=["car"], hub_drives={"car": ["alpha"]}), out


def test_credentials_files(fleet_creds: tuple[Credentials, Path], tmp_path: Path, home: str) -> None:
    creds, out = fleet_creds
    assert creds.nodes == ["alpha", "beta"] and creds.hubs == ["car"]
    for secret in ("credentials.json", "mosquitto.passwd"):
        assert stat.S_IMODE((out / secret).stat().st_mode) == 0o600
    acl = (out / "mosquitto.acl").read_text()
    assert creds.passwords["alpha"] not in acl
    # A re-run keeps every secret and adds what a new device needs.
    (tmp_path / "devices" / "gamma.hjson").write_text("{}\n")
    again = make_credentials(tmp_path / "devices", out, home, hubs=["car"])
    assert again.passwords["alpha"] == creds.passwords["alpha"] and again.keys["beta"] == creds.keys["beta"]
    assert "gamma" in again.passwords and "gamma" in again.keys


async def _receive(c: FleetClient, timeout: float = 1.0) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []

    async def pull() -> None:
        async for m in c.messages:
            got.append((m.topic.value, bytes(m.payload)))

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pull(), timeout)
    return got


async def test_acl_keeps_devices_apart(mosquitto_factory, fleet_creds: tuple[Credentials, Path], home: str) -> None:
    creds, out = fleet_creds
    broker = mosquitto_factory(password_file=str(out / "mosquitto.passwd"), acl_file=str(out / "mosquitto.acl"))
    base = BrokerSettings(broker.url, home)

    def as_(user: str) -> FleetClient:
        return FleetClient(base.with_user(user, creds.passwords[user]), client_id=f"{user}-test")

    with pytest.raises(BrokerError):  # anonymous clients are refused
        async with FleetClient(base):
            pass

    async with as_("alpha") as a, as_("beta") as b, as_(SERVER_USER) as server, as_(HA_USER) as ha, \
            as_(ADMIN_USER) as admin, as_("car") as hub:
        await a.subscribe(f"{home}/beta/#")           # A may not read B's anything
        await a.subscribe(f"{home}/alpha/#")
        await b.subscribe(f"{home}/beta/#")
        await ha.subscribe(f"{home}/#")
        await ha.subscribe("homeassistant/#")
        await admin.subscribe("#")
        await server.subscribe(f"{home}/config/request/+")
        await asyncio.sleep(0.2)
        await server.publish(f"{home}/beta/config", "secret config", qos=1)
        await a.publish(f"{home}/beta/relay", "ON", qos=1, retain=False)      # forging B's state: dropped
        await a.publish(f"{home}/beta/relay/set", "ON", qos=1)                # commanding B: dropped
        await a.publish(f"{home}/alpha/relay", "ON", qos=1)                   # its own state: fine
        await a.publish("homeassistant/switch/alpha/relay/config", "{}", qos=1)
        await a.publish(f"{home}/config/request/alpha", "{}", qos=1)
        await ha.publish(f"{home}/alpha/relay/set", "OFF", qos=1)             # HA commands nodes
        await hub.publish(f"{home}/alpha/relay/set", "TOGGLE", qos=1)         # the hub drives alpha …
        await hub.publish(f"{home}/beta/relay/set", "TOGGLE", qos=1)          # … but not beta
        got_a, got_b, got_ha, got_admin, got_server = await asyncio.gather(
            _receive(a), _receive(b), _receive(ha), _receive(admin), _receive(server))

    assert all(not t.startswith(f"{home}/beta") for t, _ in got_a)
    assert (f"{home}/beta/config", b"secret config") in got_b
    assert (f"{home}/beta/relay/set", b"ON") not in got_b and (f"{home}/beta/relay", b"ON") not in got_b
    assert (f"{home}/beta/relay/set", b"TOGGLE") not in got_b
    assert (f"{home}/alpha/relay", b"ON") in got_ha
    assert ("homeassistant/switch/alpha/relay/config", b"{}") in got_ha
    assert all(not t.endswith("/config") or t.startswith("homeassistant/") for t, _ in got_ha)  # no configs
    assert (f"{home}/alpha/relay/set", b"OFF") in got_admin and (f"{home}/alpha/relay/set", b"TOGGLE") in got_admin
    assert (f"{home}/config/request/alpha", b"{}") in got_server


async def test_tls_verifies_the_broker(mosquitto_factory, tmp_path: Path, home: str) -> None:
    good = make_tls(tmp_path / "tls", ["localhost", "127.0.0.1"])
    other = make_tls(tmp_path / "other", ["localhost"])
    broker = mosquitto_factory(tls=TLSFiles(str(good["ca"]), str(good["cert"]), str(good["key"])))
    async with FleetClient(BrokerSettings(broker.tls_url, home, ca=str(good["ca"]))) as c:
        await c.publish(f"{home}/x", "over tls", qos=1)
    with pytest.raises(BrokerError):  # a CA that did not sign the broker's certificate: refused
        async with FleetClient(BrokerSettings(broker.tls_url, home, ca=str(other["ca"])), timeout=3):
            pass


def test_cli_credentials_and_tls_init(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "kitchen.hjson").write_text("{}\n")
    run = [sys.executable, "-m", "fleet.cli", "broker"]
    out = subprocess.run([*run, "credentials", "--devices", str(devices), "--out", str(tmp_path / "c"),
                          "--hub", "car"], capture_output=True, text=True, check=True).stdout
    assert "1 nodes, 1 hubs" in out and "password" not in out.split("run the broker")[0].lower().replace(
        "mosquitto.passwd", "")
    subprocess.run([*run, "tls-init", "--out", str(tmp_path / "t"), "--host", "localhost"], check=True,
                   capture_output=True)
    assert (tmp_path / "t" / "ca.crt").exists()
    assert stat.S_IMODE((tmp_path / "t" / "broker.key").stat().st_mode) == 0o600


def test_hub_commands_only_the_nodes_its_rules_drive(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    for dev in ("garage", "kitchen"):
        (devices / f"{dev}.hjson").write_text("{}\n")
    hub = Path(__file__).resolve().parent.parent / "examples" / "hub.hjson"  # a rule drives home/garage/light/set
    subprocess.run([sys.executable, "-m", "fleet.cli", "broker", "credentials", "--devices", str(devices),
                    "--out", str(tmp_path / "c"), "--hub", f"car={hub}", "--hub", "van"], check=True,
                   capture_output=True)
    acl = (tmp_path / "c" / "mosquitto.acl").read_text()
    car = acl.split("user car\n")[1].split("\n\n")[0]
    van = acl.split("user van\n")[1].split("\n\n")[0]
    assert "topic write home/garage/+/set" in car and "home/kitchen/+/set" not in car
    assert "topic write home/garage/+/set" in van and "topic write home/kitchen/+/set" in van
