"""`fleet node run`: the virtual node is supervised like a board (reset, crash, watchdog) and its REPL is
reachable over a stable pty with mpremote."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fleet.cli import main as fleet_main
from fleet.mqtt import BrokerSettings
from fleet.vnode import VirtualNode
from tests.nodeproto import make_fs, relay_config


async def mpremote(pty: Path, code: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "mpremote"), "connect", str(pty), "resume", "exec", code,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_repl_on_a_stable_pty_across_restarts(tmp_path: Path, settings: BrokerSettings) -> None:
    pty = tmp_path / "p1.pty"
    fs = make_fs(tmp_path / "fs", {"components.json": relay_config("relay1")})
    async with VirtualNode(fs, "p1", settings, pty=pty) as vn:
        await vn.wait_for("running, 1 components")
        assert "hello 42" in await mpremote(pty, "print('hello', 6 * 7)")
        await vn.wait_for(r"KeyboardInterrupt")  # ^C stopped main.py, as on a board
        await vn.kill()
        await vn.wait_for("running, 1 components", start=vn.mark())
        assert vn.boots == 2
        assert "unix" in await mpremote(pty, "import pysmartnode; print(pysmartnode.platform)")
    assert not pty.exists()


async def test_bad_settings_fall_back_to_defaults(tmp_path: Path, settings: BrokerSettings) -> None:
    fs = make_fs(tmp_path / "fs", {"config.py": "LOG_BUFFER = 'many'\nINTERVAL = 2.5\n",
                                   "components.json": relay_config("relay1")})
    async with VirtualNode(fs, "b1", settings) as vn:
        await vn.wait_for(r"\[error\] .* config.py: LOG_BUFFER = 'many' is not a int, using 20")
        await vn.wait_for("running, 1 components")


async def test_crash_is_logged_and_the_node_boots_again(tmp_path: Path, settings: BrokerSettings) -> None:
    fs = make_fs(tmp_path / "fs", {"components.json": relay_config("relay1")})
    async with VirtualNode(fs, "c1", settings, heap="40K") as vn:  # too small: MemoryError at boot
        await vn.wait_for(r"\[critical\] .* main: uncaught: MemoryError")
        await vn.wait_for(r"crashed: boot again in 1 s")
        await vn.wait_for(r"\[vnode\] boot 2", timeout=5)
        assert vn.exits[0] == 1
        assert (fs / "last_error.txt").read_text().startswith("MemoryError")


async def test_watchdog_resets_a_stalled_node(tmp_path: Path, settings: BrokerSettings) -> None:
    hog = "import asyncio, time\n\nasync def hog():\n    await asyncio.sleep(0.5)\n    time.sleep(30)\n\n" \
          "asyncio.create_task(hog())\n"
    fs = make_fs(tmp_path / "fs", {"config.py": "WATCHDOG = 2\n", "local_components.py": hog})
    async with VirtualNode(fs, "w1", settings) as vn:
        await vn.wait_for(r"watchdog: event loop stalled for 2 s, resetting", timeout=10)
        await vn.wait_for(r"\[vnode\] boot 2", timeout=10)
        assert vn.exits[0] == -9


def test_cli_refuses_a_bad_device_id(tmp_path: Path, capsys: object) -> None:
    assert fleet_main(["node", "run", "--id", "Bad Id", "--fs", str(tmp_path)]) == 2
