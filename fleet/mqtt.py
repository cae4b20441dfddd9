"""Broker settings and the MQTT client every host service uses.

`FleetClient` wraps aiomqtt: an async context manager, messages from `async for`. It speaks MQTT 5
and falls back to 3.1.1 (the embedded amqtt broker knows only 3.1.1), and it drops messages that
match none of its own subscriptions: amqtt hands a new client retained messages that match *other*
clients' subscriptions, and a client must never act on a topic it did not ask for.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet import topics
from fleet.errors import BrokerError

log = logging.getLogger("fleet.mqtt")

DEFAULT_URL = "mqtt://127.0.0.1:1883"

# Brokers (host, port) known to refuse or accept MQTT 5, learnt by FleetClient._refuses_v5.
_V5_REFUSED: dict[tuple[str, int], bool] = {}
# CONNACK codes for bad credentials or no authorisation (3.1.1: 4, 5; MQTT 5: 134, 135).
_AUTH_CODES = (4, 5, 134, 135)


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is and how to reach it: `mqtt://user:pass@host:port` or `mqtts://…`."""

    url: str = DEFAULT_URL
    home: str = "home"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise BrokerError(self.url, "expected mqtt://[user:pass@]host[:port] or mqtts://…")
        if not topics.DEVICE_ID.fullmatch(self.home.replace("/", "_")):
            raise BrokerError(self.url, f"home {self.home!r} must be [a-z0-9_-]")

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)

    @property
    def username(self) -> str | None:
        user = urlsplit(self.url).username
        return unquote(user) if user else None

    @property
    def password(self) -> str | None:
        pw = urlsplit(self.url).password
        return unquote(pw) if pw else None

    def with_user(self, username: str | None, password: str | None) -> BrokerSettings:
        """The same broker, reached as another user."""
        netloc = f"{self.host}:{self.port}"
        if username:
            netloc = f"{username}:{password or ''}@{netloc}"
        scheme = "mqtts" if self.tls else "mqtt"
        return BrokerSettings(f"{scheme}://{netloc}", self.home, self.ca, self.cert, self.key)

    def tls_context(self) -> ssl.SSLContext | None:
        """A context that verifies the broker against `ca` (or the system store), with a client cert."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca)
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    @property
    def public_url(self) -> str:
        """The URL without its password, for logs and screens."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """The broker options every command that connects takes, with their environment defaults."""
    env = os.environ.get
    g = parser.add_argument_group("broker")
    g.add_argument("--broker", default=env("FLEET_BROKER", DEFAULT_URL),
                   help="mqtt://user:pass@host:port or mqtts://… (env FLEET_BROKER; default %(default)s)")
    g.add_argument("--home", default=env("FLEET_HOME", "home"),
                   help="topic root (env FLEET_HOME; default %(default)s)")
    g.add_argument("--ca", default=env("FLEET_CA"), help="CA certificate for mqtts:// (env FLEET_CA)")
    g.add_argument("--cert", default=env("FLEET_CERT"), help="client certificate (env FLEET_CERT)")
    g.add_argument("--key", default=env("FLEET_KEY"), help="client key (env FLEET_KEY)")


def settings_from_args(args: argparse.Namespace) -> BrokerSettings:
    return BrokerSettings(args.broker, args.home, args.ca, args.cert, args.key)


@dataclass
class Will:
    topic: str
    payload: str | bytes = "offline"
    qos: int = 1
    retain: bool = True


@dataclass
class FleetClient:
    """An MQTT connection for host code. Use as `async with FleetClient(settings, "hub-car") as c:`."""

    settings: BrokerSettings
    client_id: str = field(default_factory=lambda: f"fleet-{uuid.uuid4().hex[:8]}")
    will: Will | None = None
    clean_session: bool = True
    keepalive: int = 30
    timeout: float = 10.0
    max_queued_incoming: int | None = None
    queue_type: Any = None  # aiomqtt's incoming queue class (the hub dispatches in its put_nowait)
    # Tried in order. MQTT 3.1.1 alone for high rates: paho decodes MQTT 5 properties on every message.
    protocols: tuple[aiomqtt.ProtocolVersion, ...] = (aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311)
    max_inflight: int | None = None  # QoS 1/2 publishes awaiting their ack at once (paho's default: 20)
    _client: aiomqtt.Client | None = field(default=None, init=False, repr=False)
    _filters: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    protocol: aiomqtt.ProtocolVersion | None = field(default=None, init=False)
    dropped_foreign: int = field(default=0, init=False)

    def _make(self, protocol: aiomqtt.ProtocolVersion, probe: bool = False) -> aiomqtt.Client:
        """The aiomqtt client for `protocol`; a `probe` has its own id, a clean start and no Will."""
        s = self.settings
        will = None
        if self.will and not probe:
            will = aiomqtt.Will(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        v5 = protocol == aiomqtt.ProtocolVersion.V5
        clean = True if probe else self.clean_session
        return aiomqtt.Client(
            s.host, s.port, username=s.username, password=s.password,
            identifier=f"{self.client_id}-probe" if probe else self.client_id,
            protocol=protocol, will=will, keepalive=self.keepalive, timeout=self.timeout,
            clean_session=None if v5 else clean,
            clean_start=clean if v5 else 3,
            tls_context=s.tls_context(), max_queued_incoming_messages=self.max_queued_incoming,
            queue_type=self.queue_type,
            max_inflight_messages=self.max_inflight,
            # Without TCP_NODELAY, Nagle holds a small publish behind an unacknowledged one for the
            # peer's delayed ACK (~40 ms): measured by bench/hub_obd.py.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )

    async def _refuses_v5(self) -> bool:
        """Whether the broker refuses MQTT 5, asked without a Will: amqtt refuses a plain MQTT 5
        CONNECT at once but never answers one that carries a Will, which would cost a full timeout."""
        key = (self.settings.host, self.settings.port)
        if key not in _V5_REFUSED:
            probe = self._make(aiomqtt.ProtocolVersion.V5, probe=True)
            try:
                await probe.__aenter__()
            except aiomqtt.MqttCodeError as exc:
                if exc.rc in _AUTH_CODES:
                    return False  # refused for who we are, not for the protocol: learn nothing
                _V5_REFUSED[key] = True
            except aiomqtt.MqttError:
                _V5_REFUSED[key] = True
            else:
                _V5_REFUSED[key] = False
                with contextlib.suppress(aiomqtt.MqttError):
                    await probe.__aexit__(None, None, None)
        return _V5_REFUSED[key]

    async def __aenter__(self) -> FleetClient:
        errors: list[str] = []
        protocols = self.protocols
        if self.will and aiomqtt.ProtocolVersion.V5 in protocols and len(protocols) > 1 and await self._refuses_v5():
            protocols = tuple(p for p in protocols if p != aiomqtt.ProtocolVersion.V5)
        for protocol in protocols:
            client = self._make(protocol)
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                errors.append(f"MQTT {'5' if protocol == aiomqtt.ProtocolVersion.V5 else '3.1.1'}: {exc}")
                if isinstance(exc, aiomqtt.MqttCodeError) and exc.rc in _AUTH_CODES:
                    break  # bad credentials or not authorised: the older protocol will not help
                continue
            self._client, self.protocol = client, protocol
            return self
        raise BrokerError(self.settings.public_url, "; ".join(errors))

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):  # the link is gone already
                await client.__aexit__(None, None, None)

    @property
    def client(self) -> aiomqtt.Client:
        if self._client is None:
            raise BrokerError(self.settings.public_url, "not connected")
        return self._client

    @property
    def is_v5(self) -> bool:
        return self.protocol == aiomqtt.ProtocolVersion.V5

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self._filters[topic_filter] = qos
        await self.client.subscribe(topic_filter, qos)

    async def unsubscribe(self, topic_filter: str) -> None:
        self._filters.pop(topic_filter, None)
        await self.client.unsubscribe(topic_filter)

    async def publish(self, topic: str, payload: str | bytes | bytearray | None = None, qos: int = 0,
                      retain: bool = False, *, response_topic: str | None = None,
                      correlation: bytes | None = None) -> None:
        props = None
        if self.is_v5 and (response_topic or correlation):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
        await self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def wants(self, topic: str) -> bool:
        return any(topics.matches(f, topic) for f in self._filters)

    @property
    def messages(self) -> AsyncIterator[aiomqtt.Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[aiomqtt.Message]:
        async for msg in self.client.messages:
            if not self.wants(msg.topic.value):
                self.dropped_foreign += 1
                log.debug("dropped %s: matches none of our subscriptions", msg.topic.value)
                continue
            yield msg


def response_info(msg: aiomqtt.Message) -> tuple[str | None, bytes | None]:
    """The MQTT 5 response topic and correlation data of a request, where the sender gave them."""
    props: Any = msg.properties
    if props is None:
        return None, None
    return getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None)
