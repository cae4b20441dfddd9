"""Per-device credentials, Mosquitto password and ACL files, config signing keys, and a home CA.

`fleet broker credentials` turns the read/write table of docs/PROTOCOL.md section 9 into a Mosquitto
`password_file` and `acl_file`. Secrets live in `credentials.json` (mode 600) beside them; a re-run
keeps every existing secret and adds what new devices need. Nothing here logs a secret.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from fleet import topics
from fleet.errors import ConfigError, ConfigIssue, Position

# Users for the roles that are not devices; device ids may not take these names.
SERVER_USER = "fleet-server"
HA_USER = "fleet-homeassistant"
ADMIN_USER = "fleet-admin"
ROLE_USERS = (SERVER_USER, HA_USER, ADMIN_USER)
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes ($7$ = PBKDF2-SHA512)


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A password hash in Mosquitto 2's `$7$` format, as `mosquitto_passwd` makes it."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_secret(path: Path, text: str) -> None:
    """Write a file that holds secrets: created with mode 600, never briefly readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@dataclass
class Credentials:
    """Every user's password and every device's config signing key, for one fleet."""

    home: str
    passwords: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # device id -> hex HMAC key (PROTOCOL 4.5)
    nodes: list[str] = field(default_factory=list)
    hubs: list[str] = field(default_factory=list)
    hub_drives: dict[str, list[str]] = field(default_factory=dict)  # hub id -> node ids whose /set it writes

    @classmethod
    def load(cls, path: Path) -> Credentials | None:
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(**data)

    def save(self, path: Path) -> None:
        write_secret(path, json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")

    def ensure(self) -> None:
        """Give every user a password and every device a key, keeping those it has."""
        for user in [*self.nodes, *self.hubs, *ROLE_USERS]:
            self.passwords.setdefault(user, secrets.token_urlsafe(18))
        for device in [*self.nodes, *self.hubs]:
            self.keys.setdefault(device, secrets.token_hex(32))

    def password_file(self) -> str:
        """The users of today's fleet: a device whose file was removed can no longer log in (its secrets
        stay in credentials.json, so adding it back restores them)."""
        users = sorted({*self.nodes, *self.hubs, *ROLE_USERS})
        return "".join(f"{user}:{mosquitto_hash(self.passwords[user])}\n" for user in users)

    def acl_file(self) -> str:
        """docs/PROTOCOL.md section 9 as Mosquitto ACL lines (anything not granted is denied)."""
        h = self.home
        out = ["# Made by `fleet broker credentials` from docs/PROTOCOL.md section 9. Re-run it; do not edit.", ""]

        def device_rules(dev: str) -> list[str]:
            return [
                f"topic readwrite {h}/{dev}/#",
                f"topic write {h}/log/+/{dev}",
                f"topic write {h}/config/request/{dev}",
                f"topic write {h}/config/ack/{dev}",
                f"topic write homeassistant/+/{dev}/#",
                "topic read homeassistant/status",
                f"topic readwrite {h}/_sim/{dev}/#",
            ]

        for node in sorted(self.nodes):
            out += [f"user {node}", *device_rules(node), ""]
        for hub in sorted(self.hubs):
            drives = [f"topic write {h}/{n}/+/set" for n in sorted(self.hub_drives.get(hub, []))]
            out += [f"user {hub}", *device_rules(hub), *drives, f"topic deny {h}/+/config", f"topic read {h}/#", ""]
        out += [f"user {SERVER_USER}", f"topic write {h}/+/config", f"topic write {h}/+/cmd/set",
                f"topic readwrite {h}/config/#", f"topic read {h}/log/#", f"topic read {h}/+/status",
                f"topic read {h}/+/info", f"topic read $share/+/{h}/config/request/+", ""]
        # Configs carry secrets: only their device and the server see them (a deny line wins over reads).
        out += [f"user {HA_USER}", f"topic write {h}/+/+/set", "topic readwrite homeassistant/#",
                f"topic deny {h}/+/config", f"topic read {h}/#", ""]
        out += [f"user {ADMIN_USER}", "topic readwrite #", ""]
        return "\n".join(out)


def device_ids(devices: Path) -> list[str]:
    """The ids of the device files `DIR/<id>.hjson` (fragments such as `secrets*.hjson` and `_*.hjson`
    are includes, not devices)."""
    ids, issues = [], []
    for f in sorted(devices.glob("*.hjson")):
        if f.stem.startswith(("_", "secrets", "common")):
            continue
        why = topics.check_device_id(f.stem) or (
            f"device id {f.stem!r} is taken by a role" if f.stem in ROLE_USERS else None)
        if why:
            issues.append(ConfigIssue(Position(str(f), 1, 1), "", why))
        ids.append(f.stem)
    if issues:
        raise ConfigError(issues)
    return ids


def make_credentials(devices: Path, out: Path, home: str, hubs: list[str],
                     hub_drives: dict[str, list[str]] | None = None) -> Credentials:
    """Write `credentials.json`, `mosquitto.passwd`, `mosquitto.acl` and `keys/<id>.key` to `out`, keeping
    old secrets."""
    creds = Credentials.load(out / "credentials.json") or Credentials(home)
    creds.home = home
    creds.nodes = [d for d in device_ids(devices) if d not in hubs]
    creds.hubs = sorted(hubs)
    drives = hub_drives if hub_drives is not None else {hub: creds.nodes for hub in hubs}
    creds.hub_drives = {hub: sorted(drives.get(hub, [])) for hub in hubs}
    creds.ensure()
    creds.save(out / "credentials.json")
    write_secret(out / "mosquitto.passwd", creds.password_file())
    # The config server's signing keys (`fleet server run --keys OUT/keys`): only the keys, so the
    # server's host holds no broker passwords but its own.
    for device in [*creds.nodes, *creds.hubs]:
        write_secret(out / "keys" / f"{device}.key", creds.keys[device] + "\n")
    (out / "mosquitto.acl").write_text(creds.acl_file())
    return creds


# --- a small CA for a home setup ------------------------------------------------------------


def make_tls(out: Path, hosts: list[str], days: int = 3650, rsa: bool = False) -> dict[str, Path]:
    """A CA, a broker certificate for `hosts` (names or IPs) and one client certificate, as PEM files.
    EC P-256 keys, or RSA 2048 with `rsa`: an ESP8266's TLS (axTLS) knows no elliptic curves."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def new_key() -> ec.EllipticCurvePrivateKey | rsa_keys.RSAPrivateKey:
        return rsa_keys.generate_private_key(65537, 2048) if rsa else ec.generate_private_key(ec.SECP256R1())

    def key_pem(key: ec.EllipticCurvePrivateKey | rsa_keys.RSAPrivateKey) -> str:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SmartFleet"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = new_key()
    ca = (x509.CertificateBuilder().subject_name(name("SmartFleet home CA")).issuer_name(name("SmartFleet home CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, sans: list[str], usage: x509.ObjectIdentifier) -> tuple[str, str]:
        key = new_key()
        alt: list[x509.GeneralName] = []
        for h in sans:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                alt.append(x509.DNSName(h))
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if alt:
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode(), key_pem(key)

    broker_cert, broker_key = leaf(hosts[0], hosts, ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert, client_key = leaf("fleet-client", [], ExtendedKeyUsageOID.CLIENT_AUTH)
    files = {
        "ca": out / "ca.crt", "ca_key": out / "ca.key", "cert": out / "broker.crt", "key": out / "broker.key",
        "client_cert": out / "client.crt", "client_key": out / "client.key",
    }
    out.mkdir(parents=True, exist_ok=True)
    files["ca"].write_text(ca.public_bytes(serialization.Encoding.PEM).decode())
    files["cert"].write_text(broker_cert)
    files["client_cert"].write_text(client_cert)
    write_secret(files["ca_key"], key_pem(ca_key))
    write_secret(files["key"], broker_key)
    write_secret(files["client_key"], client_key)
    return files


# --- fleet broker credentials / tls-init ---------------------------------------------------------


def register_verbs(verbs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cred = verbs.add_parser("credentials", help="users, passwords, ACLs and config keys for a fleet")
    cred.add_argument("--devices", type=Path, required=True, help="the device registry folder")
    cred.add_argument("--out", type=Path, required=True, help="where to write credentials.json, "
                      "mosquitto.passwd and mosquitto.acl (secrets: mode 600)")
    cred.add_argument("--home", default=os.environ.get("FLEET_HOME", "home"), help="topic root")
    cred.add_argument("--hub", action="append", default=[], metavar="ID[=HUB.HJSON]",
                      help="a hub (repeatable); with its hub.hjson it may command only the nodes its rules "
                      "publish to, else every node")
    cred.set_defaults(func=_cmd_credentials)
    tls = verbs.add_parser("tls-init", help="a small CA and a broker certificate for a home setup")
    tls.add_argument("--out", type=Path, required=True)
    tls.add_argument("--host", action="append", default=[],
                     help="a name or IP the broker is reached by (repeatable; default: this host, localhost)")
    tls.add_argument("--rsa", action="store_true", help="RSA 2048 keys instead of EC P-256 (needed when ESP8266 "
                     "nodes use TLS: their axTLS has no elliptic curves)")
    tls.set_defaults(func=_cmd_tls)


def rule_targets(hub_config: Path, home: str) -> list[str]:
    """The node ids whose `/set` the rules of a hub.hjson publish to (`<home>/<id>/…/set`)."""
    from fleet.hjsonpos import load

    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            topic = value.get("publish")
            if isinstance(topic, str):
                parts = topic.replace("{home}", home).split("/")
                if len(parts) >= 3 and parts[0] == home and parts[-1] == "set" and "{" not in parts[1]:
                    found.add(parts[1])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(load(hub_config).data.get("rules", {}))
    return sorted(found)


def _cmd_credentials(args: argparse.Namespace) -> int:
    hubs = [h.split("=", 1)[0] for h in args.hub]
    drives = {h: (rule_targets(Path(c), args.home) if c else device_ids(args.devices))
              for h, _, c in (x.partition("=") for x in args.hub)}
    creds = make_credentials(args.devices, args.out, args.home, hubs, drives)
    print(f"{len(creds.nodes)} nodes, {len(creds.hubs)} hubs and {len(ROLE_USERS)} roles in {args.out}: "
          "credentials.json and mosquitto.passwd (mode 600), mosquitto.acl")
    print(f"run the broker with: fleet broker run --password-file {args.out}/mosquitto.passwd "
          f"--acl-file {args.out}/mosquitto.acl")
    print(f"sign configs with: fleet server run --keys {args.out}/keys (config keys, mode 600)")
    return 0


def _cmd_tls(args: argparse.Namespace) -> int:
    hosts = args.host or [socket.gethostname(), "localhost", "127.0.0.1"]
    files = make_tls(args.out, hosts, rsa=args.rsa)
    for what, path in files.items():
        print(f"{what:12} {path}")
    return 0
