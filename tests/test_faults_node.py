"""Faults injected between a node and its broker: the real node runtime (pysmartnode, relays and the RAM
sensor from components/) on the MicroPython unix port, supervised by fleet.vnode as a board would be, a
real Mosquitto, and tests/faultproxy.py in between. Each test asserts what must hold and reports the
measured figure (tests/faultproxy.report) that docs/RELIABILITY.md publishes.

Keepalive is 2 s here (60 s by default) so a dead link is found in seconds; every bound is generous
because the machine is shared with other test runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet.broker import Mosquitto
from fleet.mqtt import BrokerSettings
from fleet.upy import MicroPython
from fleet.vnode import VirtualNode
from tests.faultproxy import FaultProxy, report
from tests.nodeproto import Observer, make_fs, relay_config
from tests.test_node_mqtt import Watcher

KEEPALIVE = 2
RELAYS = ("relay1", "relay2", "relay3")  # pins 5, 6, 7


def node_files(ram_interval: float = 1) -> dict[str, Any]:
    cfg = relay_config(*RELAYS)
    cfg["_order"].insert(0, "ram")
    cfg["ram"] = {"package": ".machine.ram", "component": "RAM", "constructor_args": {"interval": ram_interval}}
    return {"config.py": f"MQTT_KEEPALIVE = {KEEPALIVE}\nRECEIVE_CONFIG = False\n", "components.json": cfg}


@dataclass
class Rig:
    obs: Observer
    vn: VirtualNode
    home: str
    id: str
    proxy: FaultProxy | None = None

    def topic(self, *parts: str) -> str:
        return "/".join((self.home, self.id, *parts))

    def pin(self, relay: str) -> str:
        return f"{self.home}/_sim/{self.id}/pin{5 + RELAYS.index(relay)}/level"

    def levels(self, relay: str) -> list[bytes]:
        return [p for t, p, _ in self.obs.msgs if t == self.pin(relay)]

    async def command(self, relay: str, cmd: str, want: bytes | None = None, timeout: float = 15.0) -> float:
        """Publish a QoS 1 command (accepted by the broker when this returns) and wait for the state."""
        m = self.obs.mark()
        t0 = time.monotonic()
        await self.obs.publish(self.topic(relay, "set"), cmd)
        want = want or cmd.encode()
        await self.obs.wait(self.topic(relay), lambda p: p == want, timeout=timeout, start=m)
        return time.monotonic() - t0

    async def settle(self, *relays: str) -> None:
        """Wait for each relay's pin to be on, then a moment more for any later change to show."""
        for relay in relays:
            await self.obs.wait(self.pin(relay), lambda p: p == b"1", timeout=5)
        await asyncio.sleep(0.5)

    async def heap(self, timeout: float = 5.0) -> int:
        """The next free-heap reading of the RAM sensor (taken after a garbage collection)."""
        m = self.obs.mark()
        return int(float(await self.obs.wait(self.topic("ram"), timeout=timeout, start=m)))

    async def lost_link(self, mark: int, timeout: float = 10.0) -> None:
        await self.vn.wait_for(r"mqtt: connection lost", timeout=timeout, start=mark)

    def healthy(self) -> None:
        assert self.vn.boots == 1, self.vn.output[-3000:]  # recovered by the link, never by a reset
        assert "Traceback" not in self.vn.output, self.vn.output[-3000:]


@contextlib.asynccontextmanager
async def node_rig(tmp_path: Path, settings: BrokerSettings, broker_port: int | None = None,
                   proxied: bool = True) -> AsyncIterator[Rig]:
    """A booted node (components loaded, relays waiting for commands) and an observer on the broker."""
    nid = f"f{settings.home[1:9]}"  # discovery topics are global: the id differs per test
    fs = make_fs(tmp_path / nid, node_files())
    async with contextlib.AsyncExitStack() as stack:
        proxy = None
        node_settings = settings
        if proxied:
            proxy = stack.enter_context(FaultProxy("127.0.0.1", broker_port or settings.port))
            node_settings = BrokerSettings(proxy.url, settings.home)
        obs = await stack.enter_async_context(Observer(settings))
        vn = await stack.enter_async_context(VirtualNode(fs, nid, node_settings))
        rig = Rig(obs, vn, settings.home, nid, proxy)
        await obs.wait(rig.topic("info"), timeout=20)
        await obs.wait(rig.topic("ram"), timeout=10)  # past the relays' 1 s wait for a retained state
        yield rig


async def test_broker_restart_keeps_the_session_and_a_command_sent_meanwhile(mosquitto_factory, home: str,
                                                                              tmp_path: Path) -> None:
    broker: Mosquitto = mosquitto_factory(persistence=True)
    settings = BrokerSettings(broker.url, home)
    nid = f"f{home[1:9]}"
    fs = make_fs(tmp_path / nid, node_files())
    async with VirtualNode(fs, nid, settings) as vn:
        async with Observer(settings) as obs:
            rig = Rig(obs, vn, home, nid)
            await obs.wait(rig.topic("ram"), timeout=20)
            await rig.command("relay1", "OFF")
        mark = vn.mark()
        broker.stop()
        await vn.wait_for("mqtt: connection lost", start=mark)
        await asyncio.sleep(1.0)
        broker.start()
        back = time.monotonic()
        async with Observer(settings) as obs:
            rig.obs = obs
            # accepted by the broker for the node's persistent session before the node is back
            await obs.publish(rig.topic("relay1", "set"), "ON")
            await obs.wait(rig.topic("relay1"), lambda p: p == b"ON", timeout=20)
            recovered = time.monotonic() - back
            await obs.wait(rig.topic("status"), lambda p: p == b"online")
            assert await rig.command("relay2", "ON") < 5
        await vn.wait_for(r"connected .*\(session resumed\)", start=mark)
        rig.healthy()
    report("broker restart (node)", recovery_s=round(recovered, 2))
    assert recovered < 10  # backoff 1 s, then 2 s, … with jitter; generous


async def test_stall_longer_than_keepalive_loses_no_accepted_command(settings: BrokerSettings,
                                                                      tmp_path: Path) -> None:
    async with node_rig(tmp_path, settings) as rig:
        assert rig.proxy
        mark = rig.vn.mark()
        rig.proxy.stall()
        t0 = time.monotonic()
        for relay in ("relay1", "relay2"):
            await rig.obs.publish(rig.topic(relay, "set"), "ON")  # PUBACKed by the broker: accepted
        await rig.lost_link(mark)
        detected = time.monotonic() - t0
        # the broker gives up too (1.5 × keepalive without a byte) and publishes the Will
        await rig.obs.wait(rig.topic("status"), lambda p: p == b"offline", timeout=10)
        await asyncio.sleep(max(0.0, 2.5 * KEEPALIVE - (time.monotonic() - t0)))
        m = rig.obs.mark()
        rig.proxy.resume()
        back = time.monotonic()
        for relay in ("relay1", "relay2"):
            await rig.obs.wait(rig.topic(relay), lambda p: p == b"ON", timeout=15)
        recovered = time.monotonic() - back
        await rig.obs.wait(rig.topic("status"), lambda p: p == b"online", timeout=10, start=m)
        await rig.settle("relay1", "relay2")
        for relay in ("relay1", "relay2"):
            assert rig.levels(relay) == [b"0", b"1"]  # switched on exactly once
        rig.healthy()
    report("stall > keepalive (node)", detect_s=round(detected, 2), recovery_s=round(recovered, 2),
           keepalive_s=KEEPALIVE)
    assert detected < 1.25 * KEEPALIVE + 2
    assert recovered < 10


async def test_lost_puback_redelivery_changes_the_state_once(settings: BrokerSettings, tmp_path: Path) -> None:
    """A cut in the middle of a QoS 1 exchange: the node got and handled a TOGGLE, its PUBACK never
    reached the broker, which sends the TOGGLE again (DUP) when the node is back."""
    async with node_rig(tmp_path, settings) as rig:
        assert rig.proxy
        mark = rig.vn.mark()
        rig.proxy.half_open("up")  # the node's PUBACK (and its state publish) vanish
        before = rig.proxy.transferred("down")
        await rig.obs.publish(rig.topic("relay1", "set"), "TOGGLE")
        while rig.proxy.transferred("down") == before:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)  # handled by the node meanwhile
        rig.proxy.cut()
        rig.proxy.resume()
        t0 = time.monotonic()
        await rig.vn.wait_for(r"mqtt: dropped a redelivery of packet \d+ on .*relay1/set: already handled",
                              timeout=15, start=mark)
        await rig.obs.wait(rig.topic("relay1"), lambda p: p == b"ON", timeout=10)
        recovered = time.monotonic() - t0
        await asyncio.sleep(0.5)  # a second toggle would show by now
        assert {p for t, p, _ in rig.obs.msgs if t == rig.topic("relay1")} == {b"ON"}  # a repeated ON is allowed
        assert await rig.command("relay1", "TOGGLE", b"OFF") < 5  # so it was on: toggled once
        rig.healthy()
    report("cut mid QoS 1 exchange (node)", recovery_s=round(recovered, 2), duplicate_state_changes=0)


@pytest.mark.parametrize("direction", ["down", "up"])
async def test_half_open_link_is_found_and_replaced(direction: str, settings: BrokerSettings,
                                                    tmp_path: Path) -> None:
    async with node_rig(tmp_path, settings) as rig:
        assert rig.proxy
        mark = rig.vn.mark()
        t0 = time.monotonic()
        rig.proxy.half_open(direction)  # the sockets stay open: only the keepalive can tell
        await rig.lost_link(mark, timeout=4 * KEEPALIVE)
        detected = time.monotonic() - t0
        rig.proxy.resume()
        back = time.monotonic()
        await rig.command("relay1", "ON")
        recovered = time.monotonic() - back
        rig.healthy()
    report(f"half-open, {direction} lost (node)", detect_s=round(detected, 2), recovery_s=round(recovered, 2),
           keepalive_s=KEEPALIVE)
    assert detected < 1.25 * KEEPALIVE + 2
    assert recovered < 10


CORRUPTIONS = [("down", 1), ("down", 64), ("up", 1), ("up", 8)]


async def test_corrupted_bytes_never_take_the_node_down(settings: BrokerSettings, tmp_path: Path) -> None:
    """Flip bytes of the stream in either direction (TCP checksums make this rare on a real link; a broken
    broker or middlebox is the realistic cause): the node drops the link or the message, never itself."""
    worst = 0.0
    async with node_rig(tmp_path, settings) as rig:
        assert rig.proxy
        for i, (direction, count) in enumerate(CORRUPTIONS):
            rig.proxy.corrupt(direction, count)
            t0 = time.monotonic()
            # traffic both ways for the corruption to land on; this command itself may be garbled
            with contextlib.suppress(AssertionError):
                await rig.command("relay3", "ON" if i % 2 else "OFF", timeout=1.0)
            await asyncio.sleep(0.2)
            rig.proxy.resume()
            await rig.command("relay2", "ON" if i % 2 else "OFF", timeout=20)  # a clean round trip
            took = time.monotonic() - t0
            worst = max(worst, took)
            report(f"corrupted {count} B {direction} (node)", recovery_s=round(took, 2))
        malformed = sum("malformed packet" in line for line in rig.vn.lines)
        rig.healthy()
    report("corrupted packets (node)", worst_recovery_s=round(worst, 2), malformed_seen=malformed)
    assert worst < 15


async def test_flood_on_subscribed_topics_keeps_heap_bounded_and_node_responsive(settings: BrokerSettings,
                                                                                  tmp_path: Path) -> None:
    flood = 3000
    async with node_rig(tmp_path, settings) as rig:
        base = await rig.heap()
        m = rig.obs.mark()
        t0 = time.monotonic()
        for i in range(flood):  # as fast as the client can: ~1,000+ messages/s at QoS 0
            await rig.obs.client.publish(rig.topic("relay1", "set"), "ON" if i % 2 else "OFF", qos=0)
            if i == flood // 2:
                await rig.obs.publish(rig.topic("relay3", "set"), "ON")  # a command in the middle
        sent = time.monotonic() - t0
        during = [int(float(p)) for t, p, _ in rig.obs.msgs[m:] if t == rig.topic("ram")]
        after_flood = time.monotonic()
        latency = await rig.command("relay2", "ON", timeout=30)  # queued behind whatever is left
        settled = time.monotonic() - after_flood
        await asyncio.sleep(1.5)
        end = await rig.heap()
        await rig.obs.publish(rig.topic("cmd", "set"), "info")
        info = await rig.obs.wait_json(rig.topic("info"), start=m)
        dropped = sum("incoming queue full" in line for line in rig.vn.lines)
        middle_applied = rig.levels("relay3")[-1:] == [b"1"]
        rig.healthy()
    report("flood of 3,000 commands (node)", send_s=round(sent, 2), command_after_flood_s=round(settled, 2),
           round_trip_s=round(latency, 2), heap_before=base, heap_after=end, heap_low=info["heap_min"],
           heap_min_during=min(during, default=None), dropped_qos0=dropped, middle_command_applied=middle_applied)
    assert settled < 30
    assert middle_applied  # QoS 1 is acknowledged only when taken: the broker's window holds it back, never lost
    # nothing kept from the flood: readings are after a garbage collection (info's heap_min is before one,
    # so it only says how much garbage piled up between collections)
    assert end > base - 8192
    assert min(during, default=base) > base - 16384


@pytest.mark.slow
async def test_heap_is_stable_over_1000_command_cycles(settings: BrokerSettings, tmp_path: Path) -> None:
    """A cycle: a command in, the relay switched, its state out (QoS 1 both ways). In batches of 20 (within
    the node's incoming queue of 32): one at a time, each would wait out TCP's delayed ACK."""
    cycles, batch = 1000, 20
    async with node_rig(tmp_path, settings, proxied=False) as rig:
        readings: list[int] = []
        state = rig.topic("relay1")
        t0 = time.monotonic()
        for done in range(0, cycles, batch):
            m = rig.obs.mark()
            for i in range(batch):
                await rig.obs.publish(rig.topic("relay1", "set"), "ON" if i % 2 else "OFF")
            for _ in range(batch):  # every command answered with its state
                await rig.obs.wait(state, timeout=15, start=m)
                m = next(k for k in range(m, len(rig.obs.msgs)) if rig.obs.msgs[k][0] == state) + 1
            if done + batch in (100, cycles):
                readings.append(await rig.heap())
        took = time.monotonic() - t0
        assert not [line for line in rig.vn.lines if "incoming queue full" in line]
        rig.healthy()
    warm, last = readings
    report("1,000 command cycles (node)", cycles=cycles, seconds=round(took, 1), heap_after_100=warm,
           heap_after_1000=last)
    assert last > warm - 4096  # no growth: what a cycle allocates is all garbage


# The link layer alone, cut 1,000 times: the node runtime's backoff starts at 1 s (and grows while a link
# lives < 30 s), so the soak drives pysmartnode.mqtt directly with a backoff of milliseconds.
SOAK_DRIVER = r"""
import gc, json, asyncio
from pysmartnode.mqtt import MQTTClient

with open("cfg.json") as f:
    cfg = json.load(f)
pre = cfg["pre"]
ups = [0]

async def on_connect():
    ups[0] += 1
    gc.collect()
    print("UP", ups[0], gc.mem_free())

c = MQTTClient(cfg["id"], "127.0.0.1", cfg["port"], keepalive=30, on_connect=on_connect,
               will=(pre + "/status", b"offline", True, 1), backoff_min=0.005, backoff_max=0.02,
               log=lambda level, msg: None)

async def main():
    await c.subscribe(pre + "/+/set", 1)
    c.start()
    async for topic, msg, retained in c:
        await c.publish(pre + "/echo", msg, qos=1)

asyncio.run(main())
"""


@pytest.mark.slow
def test_link_heap_is_stable_over_1000_cut_cycles(mosquitto: Mosquitto, upy, tmp_path: Path, home: str) -> None:
    cycles = 1000
    pre = f"{home}/soak"
    runner: MicroPython = upy(fs=tmp_path / "fs-soak", heap="256K")
    runner.fs.mkdir(parents=True)
    (runner.fs / "driver.py").write_text(SOAK_DRIVER)
    with FaultProxy("127.0.0.1", mosquitto.port) as proxy, Watcher(mosquitto.port, f"{home}-w") as w:
        w.subscribe(f"{pre}/echo")
        (runner.fs / "cfg.json").write_text(json.dumps({"id": f"{home}-soak", "port": proxy.port, "pre": pre}))
        node = runner.start("driver.py", name="soak")
        heap = {1: int(node.wait_for(r"^UP 1 (\d+)", timeout=10).group(1))}
        t0 = time.monotonic()
        for i in range(2, cycles + 2):
            mark = node.mark()
            proxy.cut()
            heap[i] = int(node.wait_for(rf"^UP {i} (\d+)", timeout=10, start=mark).group(1))
            if i % 250 == 0:  # and it still works (an echo cut off before its PUBACK comes again: QoS 1)
                w.publish(f"{pre}/x/set", f"echo {i}")
                while w.until(f"{pre}/echo")[0] != f"echo {i}".encode():
                    pass
        took = time.monotonic() - t0
        assert node.alive and "Traceback" not in node.output
    # after an echo each (it leaves the last message in the incoming ring); least free in the window
    warm = min(heap[i] for i in range(251, 300))
    last = min(heap[i] for i in range(cycles - 48, cycles + 2))
    report("1,000 link cuts (node MQTT client)", cycles=cycles, seconds=round(took, 1),
           reconnect_ms=round(took / cycles * 1000, 1), heap_after_250=warm, heap_after_1000=last)
    assert last > warm - 1024
