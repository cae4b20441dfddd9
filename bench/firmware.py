"""Firmware figures: bundle sizes, heap after boot from .mpy against .py, deploy time onto a virtual device.

1. `fleet firmware bundle` sizes, total and per module, for the full set (esp32) and for a typical device
   (examples/devices/room.hjson: RAM, stats, I2C, BME280, relay).
2. Free heap after boot of that device (the node's own "running, N components, heap free X" line, after
   gc.collect()) on the unix port, its modules from the bundle's .mpy against the same modules as .py,
   both from the device's filesystem alone; Mosquitto on loopback.
3. `fleet firmware deploy` of the full bundle (unix target) onto a blank virtual device on a pty with
   the real mpremote: a first deploy (every file) and a second one (nothing changed).

    .venv/bin/python bench/firmware.py [--rounds 3] [--heap 256K]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.bundle import Bundle, make_bundle
from fleet.broker import Mosquitto
from fleet.mqtt import BrokerSettings
from fleet.upy import REPO
from fleet.vnode import VirtualNode

DEVICES = REPO / "examples" / "devices"
BIN = Path(sys.executable).parent


def sizes(bundle: Bundle, title: str) -> None:
    groups: dict[str, int] = {}
    for f, n in bundle.sizes.items():
        key = "device files (boot, main, config, components.d)" if not f.startswith("lib/") else (
            "pysmartnode/virtual" if f.startswith("lib/pysmartnode/virtual/") else f.split("/")[1])
        groups[key] = groups.get(key, 0) + n
    print(f"\n## {title}: {len(bundle.sizes)} files, {bundle.total:,} B")
    for k, n in sorted(groups.items()):
        print(f"  {k:<50} {n:>7,} B")
    print("  per module (lib/, .mpy):")
    for f, n in sorted(bundle.sizes.items(), key=lambda kv: -kv[1]):
        if f.startswith("lib/"):
            print(f"    {f[4:]:<45} {n:>7,} B")


def as_py(bundle: Path, fs: Path) -> None:
    """The bundle's filesystem with each .mpy replaced by its source."""
    shutil.copytree(bundle, fs, ignore=shutil.ignore_patterns("lib", "*.json", "manifest.py"), dirs_exist_ok=True)
    shutil.copytree(bundle / "components.d", fs / "components.d", dirs_exist_ok=True)
    for mpy in (bundle / "lib").rglob("*.mpy"):
        rel = mpy.relative_to(bundle / "lib").with_suffix(".py")
        (fs / "lib" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, fs / "lib" / rel)


async def heap_after_boot(fs: Path, settings: BrokerSettings, heap: str) -> int | None:
    """The node's free heap once booted; None when it does not boot on that heap (MemoryError)."""
    async with VirtualNode(fs, "room", settings, heap=heap, source_tree=False) as vn:
        m = await vn.wait_for(r"running, \d+ components, heap free (\d+)|(MemoryError)", timeout=30)
        return int(m[1]) if m[1] else None


async def smallest_heap(fs: Path, settings: BrokerSettings) -> int:
    """The smallest -X heapsize (in K, to 4K) on which the node boots with all its components."""
    lo, hi = 32, 512  # lo fails, hi boots
    while hi - lo > 4:
        mid = (lo + hi) // 2 // 4 * 4
        if await heap_after_boot(fs, settings, f"{mid}K") is None:
            lo = mid
        else:
            hi = mid
    return hi


async def deploy_times(bundle: Path, work: Path, settings: BrokerSettings) -> tuple[float, float, str, str]:
    fs, pty = work / "deploy-fs", work / "room.pty"
    async with VirtualNode(fs, "room", settings, pty=pty, source_tree=False) as vn:
        await vn.wait_for("no module named 'pysmartnode'")

        async def deploy() -> tuple[float, str]:
            t = time.monotonic()
            proc = await asyncio.create_subprocess_exec(BIN / "fleet", "firmware", "deploy", "--port", pty,
                                                        "--bundle", bundle, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
            out = (await proc.communicate())[0].decode()
            assert proc.returncode == 0, out
            return time.monotonic() - t, out.strip().splitlines()[-1]

        mark = vn.mark()
        first, line1 = await deploy()
        await vn.wait_for(r"pysmartnode \S+ on unix", start=mark, timeout=30)  # booted from the .mpy files
        second, line2 = await deploy()
        return first, second, line1, line2


async def main(rounds: int, heap: str) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-firmware-") as tmp:
        work = Path(tmp)
        full = make_bundle(work / "full", "esp32")
        room = make_bundle(work / "room", "esp32", devices=DEVICES, device="room")
        sizes(full, "full set, esp32")
        sizes(room, "device room, esp32")
        room_unix = make_bundle(work / "room-unix", "unix", devices=DEVICES, device="room").out
        full_unix = make_bundle(work / "full-unix", "unix")
        print(f"\nfull set for the unix port (with pysmartnode/virtual): {len(full_unix.sizes)} files, "
              f"{full_unix.total:,} B")
        broker = Mosquitto(work / "mosquitto")
        broker.start()
        try:
            settings = BrokerSettings(broker.url, "benchfw")
            mpy_fs, py_fs = work / "fs-mpy", work / "fs-py"
            shutil.copytree(room_unix, mpy_fs, ignore=shutil.ignore_patterns("*.json", "manifest.py"))
            shutil.copytree(room_unix / "components.d", mpy_fs / "components.d", dirs_exist_ok=True)
            as_py(room_unix, py_fs)
            mpy = [await heap_after_boot(mpy_fs, settings, heap) or 0 for _ in range(rounds)]
            py = [await heap_after_boot(py_fs, settings, heap) or 0 for _ in range(rounds)]
            print(f"\n## heap free after boot, device room, -X heapsize={heap}, {rounds} boots each (0: no boot)")
            print(f"  from .mpy: median {statistics.median(mpy):,.0f} B  (all: {mpy})")
            print(f"  from .py:  median {statistics.median(py):,.0f} B  (all: {py})")
            print(f"  .mpy leaves {statistics.median(mpy) - statistics.median(py):,.0f} B more")
            print(f"  smallest heap that boots it: from .mpy {await smallest_heap(mpy_fs, settings)}K, "
                  f"from .py {await smallest_heap(py_fs, settings)}K")
            print(f"\n## deploy of the full unix bundle ({len(full_unix.sizes)} files, {full_unix.total:,} B) "
                  f"onto a blank virtual device over its pty, {rounds} rounds")
            for i in range(rounds):
                first, second, l1, l2 = await deploy_times(full_unix.out, work / f"d{i}", settings)
                print(f"  round {i + 1}: first {first:.2f} s, second {second:.2f} s (wall, with the CLI's start)")
                print(f"    {l1}\n    {l2}")
        finally:
            broker.close()
    print(f"\nmachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--heap", default="256K")
    a = ap.parse_args()
    asyncio.run(main(a.rounds, a.heap))

