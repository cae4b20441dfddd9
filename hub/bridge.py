"""The Mosquitto bridge from the hub's own broker to the home broker.

In a car the home broker is out of reach most of the time. The hub's Mosquitto keeps a persistent
bridge session (`cleansession false`, QoS 1): what the car publishes while away is queued and goes
home when the link is back; commands for the car and the fleet events its rules use come in.

Topics bridged (all QoS 1): out: `<home>/<hub>/#`, the hub's logs, its Home Assistant discovery, and
every topic a rule publishes on; in: the hub's `…/set` commands, `homeassistant/status`, and every
topic a rule listens to or waits on; plus the `bridge.topics` lines of `hub.hjson`. The bridge state
(`1` connected, `0` not) is on `<home>/<hub>/bridge`, retained, on both brokers.
"""

from __future__ import annotations

from fleet import topics
from fleet.mqtt import BrokerSettings
from hub.config import HubConfig


def bridge_topics(cfg: HubConfig, home: str) -> list[tuple[str, str]]:
    """(pattern, direction) of every bridged topic, in a stable order; a pattern wanted both ways is `both`."""
    hub = cfg.id
    wanted: dict[str, set[str]] = {}

    def add(pattern: str, direction: str) -> None:
        wanted.setdefault(pattern, set()).update(("in", "out") if direction == "both" else (direction,))

    own = f"{home}/{hub}/#"
    add(own, "out")
    add(topics.log(home, "+", hub), "out")
    add(f"{topics.DISCOVERY_PREFIX}/+/{hub}/#", "out")
    add(f"{home}/{hub}/+/set", "in")
    add(topics.command(home, hub, "cmd"), "in")
    add(topics.HA_STATUS, "in")
    for rule in cfg.rules(home):
        for cond in (*rule.on, *rule.cancel):
            if not topics.matches(own, cond.topic):
                add(cond.topic, "in")
        for step in rule.steps:
            if step.topic and not topics.matches(own, step.topic):
                add(step.topic, "out")
            if step.reply and not topics.matches(own, step.reply):
                add(step.reply, "in")
    for pattern, direction in cfg.bridge.topics:
        add(pattern.replace("{home}", home).replace("{hub}", hub), direction)
    return [(p, "both" if d == {"in", "out"} else d.pop()) for p, d in wanted.items()]


def bridge_lines(cfg: HubConfig, remote: BrokerSettings) -> list[str]:
    """The Mosquitto config lines of the bridge from the hub's broker to `remote` (the home broker)."""
    home, br = remote.home, cfg.bridge
    lines = [
        f"connection {br.name}",
        f"address {remote.host}:{remote.port}",
        "bridge_protocol_version mqttv311",
        "try_private true",  # Mosquitto peers then keep bridged messages from looping back
        "cleansession false",  # the home broker keeps the session: messages for the car wait there
        "local_cleansession false",  # and this one keeps what goes home while the link is down
        f"remote_clientid {home}-{cfg.id}-bridge",
        f"local_clientid {home}-{cfg.id}-bridge-local",
        f"keepalive_interval {br.keepalive}",
        f"restart_timeout {br.restart[0]} {br.restart[1]}",
        "start_type automatic",
        "notifications true",
        f"notification_topic {home}/{cfg.id}/bridge",
    ]
    if remote.username:
        lines.append(f"remote_username {remote.username}")
    if remote.password:
        lines.append(f"remote_password {remote.password}")
    if remote.tls:
        lines.append(f"bridge_cafile {remote.ca}" if remote.ca else "bridge_capath /etc/ssl/certs")
        if remote.cert:
            lines += [f"bridge_certfile {remote.cert}", f"bridge_keyfile {remote.key}"]
    lines += [f"topic {pattern} {direction} 1" for pattern, direction in bridge_topics(cfg, home)]
    return lines
