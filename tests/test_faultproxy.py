"""The fault proxy itself, between our host client and a real Mosquitto."""

from __future__ import annotations

import asyncio
import time

import pytest

from fleet.broker import Mosquitto
from fleet.errors import BrokerError
from fleet.mqtt import BrokerSettings, FleetClient
from tests.faultproxy import FaultProxy


async def _one(c: FleetClient, timeout: float) -> bytes | None:
    async def first() -> bytes:
        async for m in c.messages:
            return bytes(m.payload)
        return b""

    try:
        return await asyncio.wait_for(first(), timeout)
    except TimeoutError:
        return None


async def test_proxy_faults(mosquitto: Mosquitto, home: str) -> None:
    with FaultProxy("127.0.0.1", mosquitto.port) as proxy:
        via = BrokerSettings(proxy.url, home)
        direct = BrokerSettings(mosquitto.url, home)
        async with FleetClient(via, "behind-proxy", timeout=2) as sub, FleetClient(direct, "direct") as pub:
            await sub.subscribe(f"{home}/x")
            await pub.publish(f"{home}/x", "clean", qos=1)
            assert await _one(sub, 3) == b"clean"

            proxy.stall("down")  # held, then delivered
            await pub.publish(f"{home}/x", "held", qos=1)
            assert await _one(sub, 0.5) is None
            proxy.resume()
            assert await _one(sub, 3) == b"held"

            proxy.half_open("down")  # lost for good
            await pub.publish(f"{home}/x", "lost", qos=0)
            assert await _one(sub, 0.5) is None
            proxy.resume()

            proxy.set_delay(0.3)
            t0 = time.monotonic()
            await pub.publish(f"{home}/x", "late", qos=1)
            assert await _one(sub, 3) == b"late" and time.monotonic() - t0 >= 0.3
            proxy.resume()

            proxy.corrupt("up", 2)  # the broker sees garbage and drops the client
            with pytest.raises(Exception):  # noqa: B017 - aiomqtt raises its own error types
                await sub.publish(f"{home}/y", "x", qos=1)
                await asyncio.sleep(1)
                await sub.publish(f"{home}/y", "x", qos=1)
        assert proxy.transferred("down") > 0

        proxy.resume()
        async with FleetClient(via, "second", timeout=2) as again:
            assert proxy.connections == 1
            proxy.cut()
            await asyncio.sleep(0.2)
            with pytest.raises(Exception):  # noqa: B017
                await again.publish(f"{home}/z", "after cut", qos=1)


async def test_proxy_refuses_when_broker_is_gone(mosquitto_factory, home: str) -> None:
    broker = mosquitto_factory()
    with FaultProxy("127.0.0.1", broker.port) as proxy:
        broker.stop()
        with pytest.raises(BrokerError):
            async with FleetClient(BrokerSettings(proxy.url, home), timeout=1):
                pass
