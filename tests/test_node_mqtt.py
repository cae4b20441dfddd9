"""The node's MQTT client (pysmartnode/mqtt.py) on the real MicroPython VM (unix port).

Against a real Mosquitto for the protocol, the Will, outages and persistent sessions; against our
fake broker (tests/fakebroker.py) for what Mosquitto never does: malformed and oversized packets,
messages on topics nobody subscribed, and pings left unanswered.
"""

from __future__ import annotations

import contextlib
import json
import queue
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from fleet.broker import Mosquitto, TLSFiles, free_port
from fleet.security import make_tls
from fleet.upy import MicroPython, UPyProcess
from tests.fakebroker import FakeBroker, publish_packet
from tests.faultproxy import FaultProxy

# The node side: one driver for every test, configured by cfg.json. It prints what the client
# logs ("LOG level message"), what it receives ("MSG topic payload retained") and acts on commands
# sent to <prefix>/cmd/set: "pub <qos> <topic> <payload>", "unsub <filter>", "stats", "close".
DRIVER = r"""
import sys, json, asyncio
from pysmartnode.mqtt import MQTTClient

with open("cfg.json") as f:
    cfg = json.load(f)
pre = cfg["prefix"]

def log(level, msg):
    print("LOG", level, msg)

async def on_connect():
    print("ONCONNECT", c.reconnects)

c = MQTTClient(cfg["id"], cfg.get("host", "127.0.0.1"), cfg["port"], cfg.get("user"), cfg.get("password"),
               tls=cfg.get("tls"),
               keepalive=cfg.get("keepalive", 60),
               clean_session=cfg.get("clean", False), queue_len=cfg.get("queue_len", 32),
               max_packet=cfg.get("max_packet", 4096), on_connect=on_connect, log=log,
               will=(pre + "/status", b"offline", True, 1) if cfg.get("will", True) else None,
               backoff_min=cfg.get("backoff_min", 0.5), backoff_max=cfg.get("backoff_max", 2),
               ack_timeout=cfg.get("ack_timeout", 10))

async def offline_publisher():
    # Publishes cfg["offline"] (a list of [qos, topic, payload]) the first time the link is down.
    while not c.isconnected():
        await asyncio.sleep_ms(20)
    while c.isconnected():
        await asyncio.sleep_ms(20)
    for qos, topic, payload in cfg["offline"]:
        print("QUEUED", topic, await c.publish(topic, payload, qos=qos))

async def counter():
    # Publishes 0, 1, 2 … at QoS 1 on cfg["count"], whatever the link does.
    n = 0
    while True:
        await c.publish(cfg["count"], str(n), qos=1)
        n += 1
        await asyncio.sleep_ms(100)

async def main():
    for f in cfg.get("subs", []):
        await c.subscribe(f)
    await c.subscribe(pre + "/cmd/set")
    c.start()
    await c.wait_connected()
    print("READY")
    if cfg.get("offline"):
        asyncio.create_task(offline_publisher())
    if cfg.get("count"):
        asyncio.create_task(counter())
    async for topic, msg, retained in c:
        if topic == pre + "/cmd/set":
            words = msg.decode().split(" ", 3)
            if words[0] == "pub":
                print("PUBLISHED", await c.publish(words[2], words[3], qos=int(words[1])))
            elif words[0] == "unsub":
                print("UNSUBSCRIBED", await c.unsubscribe(words[1]))
            elif words[0] == "stats":
                print("STATS", json.dumps(c.stats()))
            elif words[0] == "close":
                await c.close()
        else:
            print("MSG", topic, msg.decode(), retained)
            if cfg.get("slow_ms"):  # a consumer slower than the sender
                await asyncio.sleep_ms(cfg["slow_ms"])
    print("CLOSED")

asyncio.run(main())
"""


def start_node(upy: Any, tmp_path: Path, name: str = "node", **cfg: Any) -> UPyProcess:
    runner: MicroPython = upy(fs=tmp_path / f"fs-{name}", heap="256K")
    runner.fs.mkdir(parents=True, exist_ok=True)
    (runner.fs / "driver.py").write_text(DRIVER)
    # In a file, not on the command line: this build of the unix port dies ("FATAL: uncaught NLR")
    # on an argument of 256 characters or more.
    (runner.fs / "cfg.json").write_text(json.dumps(cfg))
    return runner.start("driver.py", name=name)


class Watcher:
    """A plain MQTT 3.1.1 client (paho) for the far side, with a persistent session when asked:
    FleetClient speaks MQTT 5 with session expiry 0, which keeps nothing for a client that is away."""

    def __init__(self, port: int, client_id: str, clean_session: bool = True) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean_session, protocol=paho.MQTTv311)
        self.c.on_message = lambda _c, _u, m: self.messages.put(m)
        self.port = port

    def __enter__(self) -> Watcher:
        self.c.connect("127.0.0.1", self.port, 30)
        self.c.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def subscribe(self, topic: str) -> None:
        subscribed: list[int] = []
        self.c.on_subscribe = lambda _c, _u, m, _r, _p: subscribed.append(m)
        _, mid = self.c.subscribe(topic, 1)
        deadline = time.monotonic() + 5
        while mid not in subscribed and time.monotonic() < deadline:
            time.sleep(0.01)

    def publish(self, topic: str, payload: str, qos: int = 1, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos, retain).wait_for_publish(5)

    def next(self, timeout: float = 5.0) -> tuple[str, bytes, bool]:
        m = self.messages.get(timeout=timeout)
        return m.topic, m.payload, bool(m.retain)

    def until(self, topic: str, timeout: float = 10.0) -> tuple[bytes, bool]:
        deadline = time.monotonic() + timeout
        while True:
            t, p, r = self.next(max(0.01, deadline - time.monotonic()))
            if t == topic:
                return p, r


def test_connect_publish_subscribe_close(mosquitto: Mosquitto, upy, tmp_path: Path, home: str) -> None:
    pre = f"{home}/n1"
    with Watcher(mosquitto.port, "w1") as w:
        w.subscribe(f"{home}/#")
        node = start_node(upy, tmp_path, id=f"{home}-n1", port=mosquitto.port, prefix=pre,
                          subs=[f"{pre}/+/set", f"{pre}/cfg/#"])
        node.wait_for("^READY")
        assert w.until(f"{pre}/status") == (b"online", False)  # a live subscriber sees no retain flag

        w.publish(f"{pre}/relay/set", "ON", qos=1)
        w.publish(f"{pre}/cfg/a/b", "deep", qos=0)
        w.publish(f"{pre}/cfg", "parent of #", qos=0)
        node.wait_for(f"^MSG {pre}/relay/set ON False")
        node.wait_for(f"^MSG {pre}/cfg/a/b deep False")
        node.wait_for(f"^MSG {pre}/cfg parent of # False")

        w.publish(f"{pre}/cmd/set", f"pub 0 {pre}/q0 zero")
        assert w.until(f"{pre}/q0") == (b"zero", False)
        w.publish(f"{pre}/cmd/set", f"pub 1 {pre}/q1 one")
        node.wait_for("^PUBLISHED True")
        assert w.until(f"{pre}/q1") == (b"one", False)

        w.publish(f"{pre}/cmd/set", f"unsub {pre}/cfg/#")
        node.wait_for("^UNSUBSCRIBED True")
        w.publish(f"{pre}/cfg/a/b", "after unsubscribe", qos=1)
        w.publish(f"{pre}/relay/set", "OFF", qos=1)
        node.wait_for(f"^MSG {pre}/relay/set OFF False")
        assert "after unsubscribe" not in node.output

        w.publish(f"{pre}/cmd/set", "close")
        assert w.until(f"{pre}/status") == (b"offline", False)
        node.wait_for("^CLOSED")
    assert node.proc.wait(5) == 0
    with Watcher(mosquitto.port, "w1-late") as late:
        late.subscribe(f"{pre}/status")
        assert late.until(f"{pre}/status") == (b"offline", True)
    assert "Traceback" not in node.output


def test_a_qos1_flood_on_a_slow_consumer_loses_nothing(mosquitto: Mosquitto, upy, tmp_path: Path,
                                                        home: str) -> None:
    """QoS 1 is acknowledged when the consumer takes it: the broker's in-flight window holds the rest
    back, so a queue of 4 loses none of 200 messages sent at once, and their order is kept."""
    pre = f"{home}/flood"
    node = start_node(upy, tmp_path, id=f"{home}-flood", port=mosquitto.port, prefix=pre, subs=[f"{pre}/in"],
                      queue_len=4, slow_ms=5)
    node.wait_for("^READY")
    with Watcher(mosquitto.port, "flooder") as w:
        for i in range(200):
            w.c.publish(f"{pre}/in", str(i), 1)
        node.wait_for(f"^MSG {pre}/in 199 ", timeout=30)
    got = [line.split()[2] for line in node.lines if line.startswith(f"MSG {pre}/in ")]
    assert got == [str(i) for i in range(200)]
    assert "incoming queue full" not in node.output


def test_will_fires_when_the_vm_is_killed(mosquitto: Mosquitto, upy, tmp_path: Path, home: str) -> None:
    pre = f"{home}/n2"
    with Watcher(mosquitto.port, "w2") as w:
        w.subscribe(f"{pre}/status")
        node = start_node(upy, tmp_path, id=f"{home}-n2", port=mosquitto.port, prefix=pre, keepalive=30)
        node.wait_for("^READY")
        assert w.until(f"{pre}/status") == (b"online", False)
        node.kill()  # SIGKILL: no DISCONNECT, the kernel closes the socket
        assert w.until(f"{pre}/status", timeout=10) == (b"offline", False)
    with Watcher(mosquitto.port, "w2-late") as late:
        late.subscribe(f"{pre}/status")
        assert late.until(f"{pre}/status") == (b"offline", True)


def test_qos1_sent_to_the_node_while_away_arrives_after_reconnect(mosquitto: Mosquitto, upy, tmp_path: Path,
                                                                 home: str) -> None:
    pre = f"{home}/n3"
    node = start_node(upy, tmp_path, id=f"{home}-n3", port=mosquitto.port, prefix=pre, subs=[f"{pre}/+/set"])
    node.wait_for("^READY")
    node.kill()
    with Watcher(mosquitto.port, "w3") as w:
        w.publish(f"{pre}/relay/set", "while-away", qos=1)
    node = start_node(upy, tmp_path, id=f"{home}-n3", port=mosquitto.port, prefix=pre, subs=[f"{pre}/+/set"])
    node.wait_for(r"^LOG info connected .*\(session resumed\)")
    node.wait_for(f"^MSG {pre}/relay/set while-away False")


def test_qos1_published_while_the_broker_is_down_arrives_after_it_returns(mosquitto_factory, upy,
                                                                         tmp_path: Path, home: str) -> None:
    broker: Mosquitto = mosquitto_factory(persistence=True)
    pre = f"{home}/n4"
    # The watcher keeps a persistent session at the broker, so it gets what arrives while it is away.
    with Watcher(broker.port, f"{home}-w4", clean_session=False) as w:
        w.subscribe(f"{pre}/q/#")
    offline = [[1, f"{pre}/q/{i}", f"m{i}"] for i in range(5)]
    node = start_node(upy, tmp_path, id=f"{home}-n4", port=broker.port, prefix=pre, queue_len=3,
                      offline=offline)
    node.wait_for("^READY")
    broker.stop()
    node.wait_for(f"^QUEUED {pre}/q/4 False")
    node.wait_for("^LOG warning cannot connect")
    broker.start()
    node.wait_for(r"^LOG info connected .*\(session resumed\)", timeout=15)
    node.wait_for("queue dropped 2 oldest")
    with Watcher(broker.port, f"{home}-w4", clean_session=False) as w:
        got = [w.next(10) for _ in range(3)]
    assert [(t, p) for t, p, _ in got] == [(f"{pre}/q/{i}", f"m{i}".encode()) for i in (2, 3, 4)]


@pytest.mark.slow
def test_reconnects_after_a_10s_outage_with_subscriptions_restored(mosquitto_factory, upy, tmp_path: Path,
                                                                   home: str) -> None:
    broker: Mosquitto = mosquitto_factory()  # no persistence: the node's session is gone with the broker
    pre = f"{home}/n5"
    node = start_node(upy, tmp_path, id=f"{home}-n5", port=broker.port, prefix=pre, subs=[f"{pre}/+/set"])
    node.wait_for("^READY")
    mark = node.mark()
    broker.stop()
    node.wait_for("^LOG warning connection lost", start=mark)
    time.sleep(10)
    broker.start()
    back = time.monotonic()
    node.wait_for(r"^LOG info connected .*\(new session\)", start=mark, timeout=15)
    took = time.monotonic() - back
    node.wait_for("^ONCONNECT 1", start=mark)
    with Watcher(broker.port, "w5") as w:
        w.publish(f"{pre}/relay/set", "after-outage")
    node.wait_for(f"^MSG {pre}/relay/set after-outage False")
    assert took < 2 * 2 + 2  # the backoff cap (2 s, +25 % jitter) plus a generous margin
    assert "Traceback" not in node.output


def test_survives_what_a_broken_broker_sends(upy, tmp_path: Path) -> None:
    with FakeBroker() as fb:
        node = start_node(upy, tmp_path, id="n6", port=fb.port, prefix="h/n6", subs=["h/n6/+/set"],
                          max_packet=1024, will=False)
        node.wait_for("^READY")

        fb.send(publish_packet("h/n6/a/set", b"x" * 5000, qos=1, pid=7))
        node.wait_for("^LOG warning skipped a 5014-byte message on h/n6/a/set: larger than max_packet 1024")
        fb.wait(lambda: 7 in fb.pubacks)  # acknowledged, so the broker does not send it again
        fb.send(publish_packet("h/n6/a/set", b"y" * 1000, qos=1, pid=8))  # big, but allowed
        node.wait_for("^MSG h/n6/a/set " + "y" * 1000)

        fb.send(publish_packet("h/other/a/set", b"not ours"))
        node.wait_for("^LOG warning dropped a message on h/other/a/set: it matches none of our subscriptions")
        fb.send(publish_packet("h/n6/a/set", b"retained", retain=True))
        node.wait_for("^LOG info ignored a retained command on h/n6/a/set")
        fb.send(publish_packet("h/n6/a/set", b"two", qos=2, pid=9))
        node.wait_for("^LOG error refused a QoS 2 message on h/n6/a/set: QoS 2 is not supported")
        fb.send(publish_packet("h/n6/cmd/set", b"pub 2 h/n6/q2 two"))
        node.wait_for("^LOG error QoS 2 is not supported: message on h/n6/q2 not sent")
        fb.send(publish_packet("h/n6/a/set", b"still fine"))
        node.wait_for("^MSG h/n6/a/set still fine False")

        subs = len(fb.subscribed)
        fb.send(b"\x00\x02ab")  # packet type 0 does not exist
        node.wait_for("^LOG error connection lost: malformed packet: unexpected packet type 0x00")
        fb.wait(lambda: len(fb.connections) == 2 and len(fb.subscribed) == subs * 2)
        fb.send(b"\x30\xff\xff\xff\xff\x01")  # a remaining length of five bytes
        node.wait_for("^LOG error connection lost: malformed packet: remaining length longer than 4 bytes")
        fb.wait(lambda: len(fb.connections) == 3 and len(fb.subscribed) == subs * 3)
        fb.send(publish_packet("h/n6/b/set", b"after reconnect"))
        node.wait_for("^MSG h/n6/b/set after reconnect False")

        fb.send(publish_packet("h/n6/cmd/set", b"stats"))
        stats = json.loads(node.wait_for("^STATS (.*)").group(1))
        assert stats["skipped"] == 2 and stats["malformed"] == 2 and stats["foreign"] == 1
        assert stats["reconnects"] == 2
        assert node.alive and "Traceback" not in node.output


ALLOC = r"""
import gc, json, socket, asyncio
from pysmartnode.mqtt import MQTTClient, _Reader

with open("cfg.json") as f:
    cfg = json.load(f)
N = cfg["n"]
PAYLOAD = b"p" * 32

async def wait_cost():
    # What MicroPython's asyncio itself allocates each time a task starts waiting on a socket (its
    # poller registration): the client's reader pays it whenever the link goes quiet.
    addr = socket.getaddrinfo("127.0.0.1", cfg["spare_port"])[0][-1]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(addr)
    srv.listen(1)
    a = socket.socket()
    a.connect(addr)
    b, _ = srv.accept()
    b.setblocking(False)
    r = _Reader(bytearray(1))
    r.s = b
    async def poke():
        i = 0
        while i < N:
            await asyncio.sleep_ms(1)
            a.write(b"x")
            i += 1
    asyncio.create_task(poke())
    gc.collect(); gc.disable(); f = gc.mem_free()
    i = 0
    while i < N:
        await r.read(1)
        i += 1
    used = f - gc.mem_free()
    gc.enable()
    for s in (a, b, srv):
        s.close()
    return used // N

async def main():
    w = await wait_cost()
    gc.collect(); gc.disable(); f = gc.mem_free()
    t = str(bytes(6), "utf-8"); m = bytes(32)
    message = f - gc.mem_free()
    gc.enable()
    c = MQTTClient("alloc", "127.0.0.1", cfg["port"], log=lambda level, msg: print("LOG", level, msg))
    await c.subscribe("t/#")
    c.start()
    await c.wait_connected()
    for qos, topic in ((0, b"t/out"), (1, b"t/out"), (0, "t/out")):  # a str topic: its bytes' header
        for i in range(5):  # warm up: the _Out pool filled
            await c.publish(topic, PAYLOAD, qos=qos)
        gc.collect(); gc.disable(); f = gc.mem_free()
        i = 0
        while i < N:
            await c.publish(topic, PAYLOAD, qos=qos)
            i += 1
        print("PUBLISH", qos, type(topic).__name__, f - gc.mem_free())
        gc.enable()
    for qos in (0, 1):
        got = 0
        gc.collect(); gc.disable(); f = gc.mem_free()
        print("BURST", qos)
        async for topic, msg, retained in c:
            got += 1
            if got == N:
                break
        print("RECEIVE", qos, f - gc.mem_free())
        gc.enable()
    print("COSTS", w, message)
    await c.close()

asyncio.run(main())
"""


def test_a_message_allocates_nothing_beyond_its_topic_and_payload(upy, tmp_path: Path) -> None:
    """#3: the client allocates nothing per message but the received message's own topic and payload;
    the only other allocation is asyncio's poller registration when the link goes quiet."""
    n = 100
    with FakeBroker() as fb:
        runner: MicroPython = upy(fs=tmp_path / "fs", heap="256K")
        runner.fs.mkdir(parents=True, exist_ok=True)
        (runner.fs / "alloc.py").write_text(ALLOC)
        (runner.fs / "cfg.json").write_text(json.dumps({"port": fb.port, "n": n, "spare_port": free_port()}))
        node = runner.start("alloc.py", name="alloc")
        published = [int(node.wait_for(rf"^PUBLISH {qos} {kind} (-?\d+)").group(1))
                     for qos, kind in ((0, "bytes"), (1, "bytes"), (0, "str"))]
        for qos in (0, 1):
            node.wait_for(f"^BURST {qos}")
            time.sleep(0.2)  # the consumer waits for the first message, the reader for the socket
            fb.send(b"".join(publish_packet("t/in/x", b"q" * 32, qos=qos, pid=100 + i) for i in range(n)))
        received = [int(node.wait_for(rf"^RECEIVE {qos} (-?\d+)").group(1)) for qos in (0, 1)]
        wait, message = (int(x) for x in node.wait_for(r"^COSTS (\d+) (\d+)").groups())
        fb.wait(lambda: len(fb.pubacks) >= n)  # every QoS 1 message taken was acknowledged
    assert 0 < wait <= 128 and 0 < message <= 256, (wait, message)
    assert published[0] == 0, published  # QoS 0: nothing at all
    assert published[1] <= n * wait, published  # QoS 1: at most asyncio's wait for each PUBACK
    assert published[2] <= n * 32, published  # a str topic: encoded, sharing its data (a header)
    for qos in (0, 1):  # the burst: the messages' own objects, and asyncio's wait before and after it
        assert received[qos] - n * message <= 2 * wait, (qos, received[qos], n * message, wait)


def test_finds_a_dead_link_when_pings_go_unanswered(upy, tmp_path: Path) -> None:
    keepalive = 2
    with FakeBroker(answer_pings=False) as fb:
        node = start_node(upy, tmp_path, id="n7", port=fb.port, prefix="h/n7", keepalive=keepalive, will=False)
        node.wait_for("^READY")
        t0 = time.monotonic()  # the last thing the broker said was the SUBACK, just before READY
        node.wait_for("^LOG warning connection lost: no answer from the broker for .* ms: dead link",
                      timeout=3 * keepalive)
        assert time.monotonic() - t0 < 1.5 * keepalive + 0.5  # 0.5 s for a busy machine
        assert fb.pings >= 1
        fb.answer_pings = True
        fb.wait(lambda: len(fb.connections) == 2)
        # The node closed the dead link's socket before reconnecting. MicroPython's Stream.close() does
        # not: it stayed open until the garbage collector got to it (on a board, one of its few sockets).
        assert fb.hangups == 1
        mark = node.mark()
        time.sleep(2 * keepalive)  # answered pings keep the link up
        assert len(fb.connections) == 2 and fb.pings >= 2
        assert "connection lost" not in "\n".join(node.lines[mark:])


def test_unacknowledged_qos1_is_resent_with_dup_then_after_reconnect(upy, tmp_path: Path) -> None:
    with FakeBroker(ack_publishes=False) as fb:
        node = start_node(upy, tmp_path, id="n8", port=fb.port, prefix="h/n8", will=False, ack_timeout=0.3)
        node.wait_for("^READY")
        fb.send(publish_packet("h/n8/cmd/set", b"pub 1 h/n8/x hello"))
        node.wait_for("^LOG warning no PUBACK for packet .* on h/n8/x; resending")
        node.wait_for("^LOG warning connection lost: no PUBACK for packet .* after 3 tries")
        node.wait_for("^PUBLISHED False")  # kept in the queue, not lost
        fb.ack_publishes = True
        fb.wait(lambda: len(fb.connections) == 2 and len(fb.published) == 4)
        assert [(p[0], p[1], p[4]) for p in fb.published] == [
            ("h/n8/x", b"hello", False), ("h/n8/x", b"hello", True), ("h/n8/x", b"hello", True),
            ("h/n8/x", b"hello", True)]
        fb.send(publish_packet("h/n8/cmd/set", b"stats"))
        stats = json.loads(node.wait_for("^STATS (.*)").group(1))
        assert stats["tx"] == 1 and stats["queued"] == 0 and stats["dropped"] == 0


def test_tls_verifies_the_broker(mosquitto_factory, upy, tmp_path: Path, home: str) -> None:
    good = make_tls(tmp_path / "tls", ["localhost", "127.0.0.1"])
    other = make_tls(tmp_path / "other", ["localhost"])
    broker = mosquitto_factory(tls=TLSFiles(str(good["ca"]), str(good["cert"]), str(good["key"])))
    pre = f"{home}/n9"
    node = start_node(upy, tmp_path, id=f"{home}-n9", host="localhost", port=broker.tls_port, prefix=pre,
                      tls={"ca": str(good["ca"])}, subs=[f"{pre}/+/set"])
    node.wait_for("^READY")
    with Watcher(broker.port, "w9") as w:
        w.publish(f"{pre}/relay/set", "over tls")
        node.wait_for(f"^MSG {pre}/relay/set over tls False")
    bad = start_node(upy, tmp_path, name="bad", id=f"{home}-n9b", host="localhost", port=broker.tls_port,
                     prefix=pre, tls={"ca": str(other["ca"])})
    bad.wait_for("^LOG warning cannot connect to localhost:")
    assert "READY" not in bad.output, bad.output


def test_tls_with_a_client_certificate(mosquitto_factory, upy, tmp_path: Path, home: str) -> None:
    files = make_tls(tmp_path / "tls", ["localhost"])
    broker = mosquitto_factory(tls=TLSFiles(str(files["ca"]), str(files["cert"]), str(files["key"]),
                                            require_certificate=True))
    tls = {"ca": str(files["ca"]), "cert": str(files["client_cert"]), "key": str(files["client_key"])}
    node = start_node(upy, tmp_path, id=f"{home}-n12", host="localhost", port=broker.tls_port,
                      prefix=f"{home}/n12", tls=tls)
    node.wait_for("^READY")
    anonymous = start_node(upy, tmp_path, name="anon", id=f"{home}-n12b", host="localhost", port=broker.tls_port,
                           prefix=f"{home}/n12", tls={"ca": str(files["ca"])})
    anonymous.wait_for("^LOG warning cannot connect to localhost:")
    assert "READY" not in anonymous.output


def test_nothing_is_lost_when_the_link_stalls(mosquitto: Mosquitto, upy, tmp_path: Path, home: str) -> None:
    pre = f"{home}/n10"
    with Watcher(mosquitto.port, "w10") as w, FaultProxy("127.0.0.1", mosquitto.port) as proxy:
        w.subscribe(f"{pre}/count")
        node = start_node(upy, tmp_path, id=f"{home}-n10", port=proxy.port, prefix=pre, keepalive=2,
                          count=f"{pre}/count")
        node.wait_for("^READY")
        time.sleep(1)
        proxy.stall()  # the link goes silent both ways, as a weak Wi-Fi link does; no socket closes
        node.wait_for("^LOG warning connection lost: no answer from the broker", timeout=10)
        proxy.resume()
        node.wait_for(r"^LOG info connected .*\(session resumed\)", timeout=10)
        got: set[int] = set()
        deadline = time.monotonic() + 1.5
        with contextlib.suppress(queue.Empty):
            while time.monotonic() < deadline:
                got.add(int(w.next(0.5)[1]))
        assert len(got) > 15
        assert got == set(range(max(got) + 1))  # every number arrived (a duplicate is allowed, a gap is not)


def test_a_refused_connect_is_logged_and_retried(upy, tmp_path: Path) -> None:
    with FakeBroker(refuse=5) as fb:
        node = start_node(upy, tmp_path, id="n11", port=fb.port, prefix="h/n11", user="n11", password="wrong",
                          backoff_min=0.2)
        node.wait_for("^LOG warning cannot connect to 127.0.0.1:.*: OSError broker refused: not authorised")
        fb.wait(lambda: len(fb.connections) >= 2)  # it keeps trying, with backoff
        c = fb.connections[0]
        assert (c.client_id, c.user, c.password, c.clean_session, c.keepalive) == ("n11", "n11", b"wrong", False, 60)
        assert c.will == ("h/n11/status", b"offline")
        fb.refuse = 0
        node.wait_for("^READY")
        assert node.alive and "Traceback" not in node.output
