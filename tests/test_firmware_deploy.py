"""`fleet firmware deploy` with the real mpremote onto a virtual device (the MicroPython unix port with its
REPL on a pty): the files land in its filesystem, the node boots from them alone (no source tree) and
comes online on Mosquitto with its components loaded from .mpy; a second deploy copies nothing. And the
README's "Deploy to a node", followed as a user would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sys
from pathlib import Path

import pytest

from firmware.bundle import make_bundle
from fleet.mqtt import BrokerSettings
from fleet.upy import REPO
from fleet.vnode import VirtualNode
from tests.nodeproto import Observer

BIN = Path(sys.executable).parent
DEVICES = REPO / "examples" / "devices"
pytestmark = pytest.mark.slow


async def run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(*map(str, cmd), cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"{cmd}: {out.decode()}"
    return out.decode()


async def test_deploy_onto_a_virtual_device(tmp_path: Path, settings: BrokerSettings) -> None:
    bundle = make_bundle(tmp_path / "bundle", "unix", devices=DEVICES, device="room").out
    fs, pty = tmp_path / "fs", tmp_path / "room.pty"
    status = f"{settings.home}/room/status"
    async with Observer(settings, status) as obs, \
            VirtualNode(fs, "room", settings, pty=pty, source_tree=False) as vn:
        await vn.wait_for("no module named 'pysmartnode'")  # a blank device: nothing but its filesystem
        # the package.json is one `mpremote mip install` takes: it fills the device's lib/
        await run(BIN / "mpremote", "connect", pty, "resume", "mip", "install", bundle / "package.json")
        node_mpy = "lib/pysmartnode/node.mpy"
        assert (fs / node_mpy).read_bytes() == (bundle / node_mpy).read_bytes()
        # deploy: what mip put there is unchanged, the device files are copied, the device restarts
        out = await run(BIN / "fleet", "firmware", "deploy", "--port", pty, "--bundle", bundle)
        lib = len(list((bundle / "lib").rglob("*.mpy")))
        assert re.search(rf"copied 9 files \(\d[\d,]* B\), {lib} unchanged, in [\d.]+ s; restarted", out), out
        for name in ("boot.py", "main.py", "config.py", "components.d/_order.json", "components.d/lamp.json"):
            assert (fs / name).read_bytes() == (bundle / name).read_bytes(), name
        await vn.wait_for(r"loaded 5 of 5 components", timeout=15)
        await obs.wait(status, lambda p: p == b"online", timeout=15)
        assert vn.exits == [3] and vn.boots == 2  # deploy's restart is a reset, as on a board
        assert not list((fs / "lib").rglob("*.py"))  # no source on the device: the node runs from .mpy
        # a second deploy with nothing changed copies nothing (its bundle made afresh: the same inputs
        # give the same files)
        out = await run(BIN / "fleet", "firmware", "deploy", "--port", pty, "--devices", DEVICES, "--device", "room",
                        "--target", "unix")
        assert f"copied 0 files (0 B), {lib + 9} unchanged" in out, out
        await vn.wait_for(r"loaded 5 of 5 components", start=vn.mark() - 40, timeout=15)
        files = await run(BIN / "mpremote", "connect", pty, "resume", "exec",
                          "import sys\nfor m in ('components.sensors.bme280', 'components.machine.relay', "
                          "'pysmartnode.node'):\n print(sys.modules[m].__file__)")
        assert files.split() == [f"{fs}/lib/components/sensors/bme280.mpy", f"{fs}/lib/components/machine/relay.mpy",
                                 f"{fs}/lib/pysmartnode/node.mpy"]


async def test_deploy_refuses_a_bundle_for_another_board(tmp_path: Path, settings: BrokerSettings) -> None:
    esp = make_bundle(tmp_path / "esp", "esp8266", packages=[".machine.relay"]).out
    old = make_bundle(tmp_path / "old", "unix", packages=[".machine.relay"], micropython="1.18").out

    async def refused(bundle: Path) -> str:
        proc = await asyncio.create_subprocess_exec(
            BIN / "fleet", "firmware", "deploy", "--port", tmp_path / "x1.pty", "--bundle", bundle,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out = (await asyncio.wait_for(proc.communicate(), 30))[0].decode()
        assert proc.returncode == 2, out
        return out

    async with VirtualNode(tmp_path / "fs", "x1", settings, pty=tmp_path / "x1.pty", source_tree=False) as vn:
        await vn.wait_for("no module named 'pysmartnode'")
        assert "on 'linux', the bundle is for esp8266: make it with --target unix" in await refused(esp)
        assert "loads .mpy v6, the bundle holds v5.0" in await refused(old)  # made for MicroPython 1.18
        assert not (tmp_path / "fs" / "lib").exists()


async def wait_in_file(path: Path, text: bytes, timeout: float = 20) -> None:
    for _ in range(int(timeout * 10)):
        if text in path.read_bytes():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path}:\n{path.read_text(errors='replace')[-3000:]}")


def readme_steps() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Deploy to a node", 1)[1]
    block = section.split("```", 2)[1]
    return [line for line in block.strip().splitlines() if line.strip()]


async def test_readme_deploy_to_a_node(tmp_path: Path, settings: BrokerSettings) -> None:
    """The README's steps, run as written in a fresh folder (with the test's broker and topic root)."""
    os.symlink(REPO / "examples", tmp_path / "examples")
    steps = readme_steps()
    assert len(steps) == 3 and steps[0].endswith("&")
    status = f"{settings.home}/room/status"
    node: asyncio.subprocess.Process | None = None
    log = open(tmp_path / "node.log", "wb")  # noqa: SIM115 (closed in finally, after the node)
    try:
        async with Observer(settings, status) as obs:
            for step in steps:
                line = step.removesuffix("&").strip().replace("mqtt://127.0.0.1:1883",
                                                              f"{settings.url} --home {settings.home}")
                argv = shlex.split(line)
                assert argv[0] == "fleet"
                argv[0] = str(BIN / "fleet")
                if step.endswith("&"):
                    # the background node; ended with ^C (SIGINT) below, which stops its VM too
                    node = await asyncio.create_subprocess_exec(*argv, cwd=tmp_path, stdout=log,
                                                                stderr=asyncio.subprocess.STDOUT)
                    await wait_in_file(tmp_path / "node.log", b"no module named 'pysmartnode'")
                else:
                    out = await run(*argv, cwd=tmp_path)
                    if argv[2] == "bundle":
                        assert "total (" in out and "lib/components/sensors/bme280.mpy" in out
            assert (tmp_path / "nodes" / "room" / "lib" / "pysmartnode" / "node.mpy").is_file()
            await obs.wait(status, lambda p: p == b"online", timeout=20)
            await wait_in_file(tmp_path / "node.log", b"loaded 5 of 5 components")
    finally:
        if node is not None and node.returncode is None:
            node.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(node.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    node.kill()
                await node.wait()
        log.close()
    assert not (tmp_path / "nodes" / "room.pty").exists()  # the node and its VM ended cleanly
