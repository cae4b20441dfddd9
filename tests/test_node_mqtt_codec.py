"""Fast CPython checks of the node client's packet encoding and topic rules (pysmartnode/mqtt.py)."""

from __future__ import annotations

import itertools

import pytest

from fleet import topics
from pysmartnode import mqtt, mqtt_tls
from tests.fakebroker import mqtt_length


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455])
def test_remaining_length_matches_an_independent_encoder(n: int) -> None:
    buf = bytearray(5)
    end = mqtt.put_length(buf, 0, n)
    assert bytes(buf[:end]) == mqtt_length(n)


def test_connect_packet_bytes() -> None:
    pkt = mqtt.connect_packet("n1", keepalive=60, clean_session=False,
                              will=(b"home/n1/status", b"offline", True, 1), user="u", password="p")
    body = (b"\x00\x04MQTT\x04" + bytes([0x80 | 0x40 | 0x20 | 0x08 | 0x04, 0, 60])
            + b"\x00\x02n1" + b"\x00\x0ehome/n1/status" + b"\x00\x07offline" + b"\x00\x01u" + b"\x00\x01p")
    assert pkt == b"\x10" + mqtt_length(len(body)) + body
    assert mqtt.connect_packet("x", 0, True)[9] == 0x02  # clean session, no will, no user


def test_subscribe_and_unsubscribe_packets() -> None:
    assert mqtt.subscribe_packet(0x0102, "a/+", 1) == b"\x82\x08\x01\x02\x00\x03a/+\x01"
    assert mqtt.unsubscribe_packet(7, "a/#") == b"\xa2\x07\x00\x07\x00\x03a/#"


@pytest.mark.parametrize("name,valid", [("a/b", True), ("a/+/b", False), ("#", False), ("a//b", True),
                                        ("", False), ("/", True), ("a\x00b", False)])
def test_topic_names(name: str, valid: bool) -> None:
    assert (mqtt.check_topic(name, False) is None) is valid


@pytest.mark.parametrize("f,valid", [("a/+/b", True), ("#", True), ("+", True), ("a/#", True), ("+/+", True),
                                     ("a/#/b", False), ("a/b#", False), ("a+/b", False), ("a/+b", False),
                                     ("", False), ("sport/tennis/#", True)])
def test_topic_filters(f: str, valid: bool) -> None:
    assert (mqtt.check_topic(f, True) is None) is valid


FILTERS = ["#", "+", "a/#", "a/+", "a/+/c", "+/+", "/+", "+/b/#", "a/b/c", "a", "$SYS/#", "+/status", "a//c"]
TOPICS = ["a", "a/", "a/b", "a/b/c", "a/b/c/d", "/a", "/", "b/b", "x/b/c", "$SYS/load", "$SYS", "n/status",
          "a//c", "ab", "a/bc"]


@pytest.mark.parametrize("f,t", list(itertools.product(FILTERS, TOPICS)))
def test_topic_matching_agrees_with_the_host_code(f: str, t: str) -> None:
    assert mqtt.topic_matches(f, t) == topics.matches(f, t)


def test_matching_spec_examples() -> None:
    assert mqtt.topic_matches("sport/tennis/player1/#", "sport/tennis/player1")
    assert mqtt.topic_matches("sport/#", "sport")
    assert not mqtt.topic_matches("sport/+", "sport")
    assert mqtt.topic_matches("sport/+", "sport/")
    assert mqtt.topic_matches("+/+", "/finance")
    assert not mqtt.topic_matches("#", "$SYS/x") and mqtt.topic_matches("$SYS/#", "$SYS/x")


def test_ring_drops_the_oldest_and_puts_back_at_the_head() -> None:
    r = mqtt._Ring([None] * 3)
    assert [r.push(i) for i in range(5)] == [None, None, None, 0, 1]
    assert r.pop() == 2
    assert r.push_front("again") and not r.push_front("no room")
    assert [r.pop() for _ in range(r.n)] == ["again", 3, 4]


def test_a_pem_ca_becomes_der(tmp_path) -> None:  # MicroPython's mbedtls takes CA data only as DER
    import ssl

    from fleet.security import make_tls

    pem = make_tls(tmp_path / "tls", ["localhost"])["ca"].read_text()
    with_junk = tmp_path / "ca.pem"
    with_junk.write_text("Bag Attributes\n    friendlyName: home\r\n" + pem.replace("\n", "\r\n"))
    assert mqtt_tls.der(str(with_junk)) == ssl.PEM_cert_to_DER_cert(pem)


def test_packet_ids_wrap_and_skip_the_ones_in_use() -> None:
    c = mqtt.MQTTClient("n", "127.0.0.1")
    c._pid = 65534
    c._pending = {65535: [None, None, None], 1: [None, None, None]}  # awaited, or held by a requeued message
    assert [c._newpid() for _ in range(3)] == [2, 3, 4]
    c._pid = 65533
    c._pending = {}
    assert [c._newpid() for _ in range(3)] == [65534, 65535, 1]  # never 0


def test_publish_refuses_an_invalid_topic_name_every_time() -> None:
    # Offline, publish only checks and queues: that much runs under CPython too.
    c = mqtt.MQTTClient("n1", "127.0.0.1")
    for _ in range(2):
        with pytest.raises(ValueError, match="invalid topic name"):
            c.publish("home/+/x", b"1")
    c.publish("home/n1/x", b"1")
    c.publish(b"home/n1/x", "2")
    assert c.stats()["queued"] == 2
