"""The test rig: real brokers and the real MicroPython VM, started per run or per test, torn down by PID.

Fixtures
- `mosquitto`: one Mosquitto for the whole run (a unique `home` per test keeps tests apart).
- `mosquitto_factory(**opts)`: a fresh Mosquitto for this test (persistence, users/ACL, TLS, bridge).
- `embedded_broker`: the amqtt broker in-process, fresh per test.
- `home`: a unique topic root for this test; `settings`: BrokerSettings for `mosquitto` and `home`.
- `upy(fs=None, heap="256K")`: a MicroPython runner on a folder that plays the board's filesystem.
No test depends on the internet or a fixed port. A real part that cannot start fails the run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.broker import EmbeddedBroker, Mosquitto
from fleet.mqtt import BrokerSettings
from fleet.upy import MicroPython, UPyProcess


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()  # raises BrokerError when Mosquitto is missing: the run fails, never skips
    yield broker
    broker.close()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    started: list[Mosquitto] = []

    def make(**opts: Any) -> Mosquitto:
        workdir = opts.pop("workdir", None) or tmp_path / f"mosquitto-{len(started)}"
        broker = Mosquitto(Path(workdir), **opts)
        started.append(broker)
        return broker.start()

    yield make
    for broker in started:
        broker.close()


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker().start()
    yield broker
    broker.stop()


@pytest.fixture
def home() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(mosquitto: Mosquitto, home: str) -> BrokerSettings:
    return BrokerSettings(mosquitto.url, home)


@pytest.fixture
def upy(tmp_path: Path) -> Iterator[Callable[..., MicroPython]]:
    """`upy(fs=…, heap=…)` gives a MicroPython runner; processes it starts are killed at teardown."""
    procs: list[UPyProcess] = []

    def make(fs: Path | None = None, heap: str = "256K", **opts: Any) -> MicroPython:
        runner = MicroPython(fs or tmp_path / "fs", heap=heap, **opts)
        start = runner.start

        def tracked_start(*a: Any, **kw: Any) -> UPyProcess:
            p = start(*a, **kw)
            procs.append(p)
            return p

        runner.start = tracked_start  # type: ignore[method-assign]
        return runner

    yield make
    for p in procs:
        p.kill()
