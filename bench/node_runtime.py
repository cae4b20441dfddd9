"""Node runtime figures on the MicroPython unix port (x64) against a real Mosquitto.

1. The smallest `-X heapsize` on which a node with logging and four components (an I2C bus, a sensor on
   it, two relays; everything from .mpy) boots and runs 10,000 messages (5,000 /set commands in, 5,000
   states out) without a MemoryError or a reset; and the free heap after boot at that size.
2. Heap free (reported by `info`, after gc) before and after those 10,000 messages on a 256K heap.
3. The /set -> state round trip (median, p99) over 1,000 commands, on a 256K heap.
Mosquitto runs with `set_tcp_nodelay true` (without it each round trip waits ~40 ms for delayed ACKs).

    .venv/bin/python bench/node_runtime.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.broker import Mosquitto
from fleet.mqtt import BrokerSettings
from fleet.vnode import VirtualNode
from tests.nodeproto import Observer, compile_mpy, make_fs

CONFIG = {
    "_order": ["i2c", "thermo", "relay1", "relay2"],
    "i2c": {"package": "pysmartnode.hw", "component": "i2c", "constructor_args": {"scl": 5, "sda": 4}},
    "thermo": {"package": "parts", "component": "Thermo", "constructor_args": {"i2c": "i2c", "interval": 5}},
    "relay1": {"package": "parts", "component": "Relay", "constructor_args": {"pin": 12}},
    "relay2": {"package": "parts", "component": "Relay", "constructor_args": {"pin": 13}},
}
BOARD = {"models": [{"model": "thermochip", "module": "parts", "bus": "i2c", "address": "0x44"}]}


async def run_node(settings: BrokerSettings, workdir: Path, heap: str, commands: int,
                   window: int = 8) -> tuple[bool, int | None, list[float], str, tuple[int, int]]:
    """(survived, free heap after boot, round trips in s, output, (heap free by `info` before, after))
    for `commands` /set commands."""
    fs = make_fs(workdir / f"fs-{heap}", {"components.json": CONFIG, "board.json": BOARD})
    compile_mpy(fs)
    node_id = f"bench{heap.lower()}-{commands}-{window}"  # a run of its own: no retained states of another
    h = settings.home
    rtts: list[float] = []
    async with Observer(settings, f"{h}/{node_id}/#") as obs, \
            VirtualNode(fs, node_id, settings, heap=heap) as vn:
        try:
            before = json.loads(await obs.wait(f"{h}/{node_id}/info", timeout=20))["heap_free"]
        except AssertionError:
            return False, None, rtts, vn.output, (0, 0)
        free = None
        if m := re.search(r"running, \d+ components, heap free (\d+)", vn.output):
            free = int(m[1])
        seen = obs.mark()
        sent: dict[int, float] = {}
        state_topics = (f"{h}/{node_id}/relay1", f"{h}/{node_id}/relay2")
        done = 0
        deadline = time.monotonic() + max(60, commands / 100)
        for i in range(commands):
            # keep `window` commands in flight, alternating the two relays and ON/OFF, so each one changes state
            while i - done >= window:
                while seen < len(obs.msgs):
                    if obs.msgs[seen][0] in state_topics and not obs.msgs[seen][2]:
                        if done not in sent:  # a command delivered twice: the link dropped and resent it
                            return False, free, rtts, vn.output + "\n[bench] more states than commands", (0, 0)
                        rtts.append(time.perf_counter() - sent.pop(done))
                        done += 1
                    seen += 1
                if i - done >= window:
                    obs._new.clear()
                    try:
                        await asyncio.wait_for(obs._new.wait(), 5)
                    except TimeoutError:
                        return False, free, rtts, vn.output + f"\n[bench] stalled after {done} commands", (0, 0)
            relay = 1 + i % 2
            value = "ON" if (i // 2) % 2 == 0 else "OFF"
            sent[i] = time.perf_counter()
            await obs.publish(f"{h}/{node_id}/relay{relay}/set", value)
            if time.monotonic() > deadline:
                return False, free, rtts, vn.output + "\n[bench] too slow", (0, 0)
        while done < commands and time.monotonic() < deadline:
            while seen < len(obs.msgs):
                if obs.msgs[seen][0] in state_topics and not obs.msgs[seen][2] and done in sent:
                    rtts.append(time.perf_counter() - sent.pop(done))
                    done += 1
                seen += 1
            obs._new.clear()
            with_timeout = asyncio.wait_for(obs._new.wait(), 5)
            try:
                await with_timeout
            except TimeoutError:
                break
        m0 = obs.mark()
        await obs.publish(f"{h}/{node_id}/cmd/set", "info")
        try:
            after = json.loads(await obs.wait(f"{h}/{node_id}/info", start=m0, timeout=5))["heap_free"]
        except AssertionError:
            return False, free, rtts, vn.output + "\n[bench] no info after the run", (0, 0)
        ok = done == commands and vn.boots == 1 and "MemoryError" not in vn.output
        return ok, free, rtts, vn.output, (before, after)


def kib(heap: str) -> int:
    return int(heap[:-1])


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1,000 messages per heap size, 200 round trips")
    args = ap.parse_args()
    commands = 500 if args.quick else 5000
    trips = 200 if args.quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # set_tcp_nodelay: Mosquitto otherwise holds small packets back for the peer's delayed ACK (~40 ms)
        broker = Mosquitto(work / "mosquitto", extra=["set_tcp_nodelay true"]).start()
        try:
            settings = BrokerSettings(broker.url, "bench")
            # smallest heap: bisect in 4K steps between a size that fails and one that passes
            lo, hi = 48, 144
            ok, free, _, out, _ = await run_node(settings, work, f"{hi}K", commands)
            if not ok:
                sys.exit(f"{hi}K does not run the node:\n{out[-3000:]}")
            results = {hi: free}
            while hi - lo > 4:
                mid = (lo + hi) // 2 // 4 * 4
                ok, free, _, out, _ = await run_node(settings, work, f"{mid}K", commands)
                print(f"  heap {mid}K: {'ok' if ok else 'fails'} (free after boot {free})", flush=True)
                if ok:
                    hi, results[mid] = mid, free
                else:
                    lo = mid
            print(f"smallest heap that boots 4 components (.mpy) and runs {2 * commands} messages: {hi}K "
                  f"(x64 unix port); free heap after boot there: {results[hi]} bytes")
            ok, free, _, out, (before, after) = await run_node(settings, work, "256K", commands)
            if not ok:
                sys.exit(f"256K does not run the node:\n{out[-3000:]}")
            print(f"heap free by info (after gc.collect) at 256K before / after {2 * commands} messages: "
                  f"{before} / {after}")
            ok, free, rtts, out, _ = await run_node(settings, work, "256K", trips, window=1)
            if not ok:
                sys.exit(f"round trips failed:\n{out[-3000:]}")
            ms = sorted(r * 1000 for r in rtts)
            p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
            print(f"/set -> state round trip over {len(ms)} commands (256K heap): median "
                  f"{statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms; free heap after boot {free}")
        finally:
            broker.close()


if __name__ == "__main__":
    asyncio.run(main())
