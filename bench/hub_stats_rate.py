"""The message rate the hub's stats job keeps up with (goal: 20,000 msg/s on this machine).

    .venv/bin/python bench/hub_stats_rate.py [--rates 5000,10000,20000,30000,40000] [--seconds 6]

Starts Mosquitto and `fleet hub run` (a process of its own) with the stats job metering `bench/load/#`
(a report every 0.5 s). A raw-socket MQTT 3.1.1 publisher (pre-encoded QoS 0 packets, 32 B payloads
over 100 topics, paced in 10 ms slices: paho would be the limit, not the hub) sends each rate for
`--seconds`. From the hub's own reports (`seen`: messages metered since it started) it prints, per
rate: the messages the hub counted of those sent, how long after the stage it had counted them all
(a hub that keeps up is done within a report interval), the rate that makes, the hub process's CPU
and loop lag, and the messages dropped by the hub or by the broker (Mosquitto drops QoS 0 messages
for a client whose queue is full).
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from typing import Any

from hub_common import client, hub_process

HUB = """
id: bench
workdir: WORKDIR
jobs: ["stats"]
stats: { filter: "{home}/load/#", window: 3, depth: 2, interval: 0.5 }
"""


def _packet(kind: int, body: bytes) -> bytes:
    length, out = len(body), bytearray([kind])
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (128 if length else 0))
        if not length:
            return bytes(out) + body


def _text(s: str) -> bytes:
    return len(s).to_bytes(2, "big") + s.encode()


def raw_publisher(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # CONNECT: MQTT 3.1.1, clean session, keepalive off.
    sock.sendall(_packet(0x10, _text("MQTT") + bytes([4, 2, 0, 0]) + _text("bench-load")))
    if sock.recv(4)[:1] != b"\x20":
        raise SystemExit("no CONNACK")
    return sock


def send_stage(sock: socket.socket, rate: int, seconds: float) -> int:
    packets = [_packet(0x30, _text(f"bench/load/d{i}/v") + b"x" * 32) for i in range(100)]
    per_slice = rate / 100
    sent, carry, t = 0, 0.0, time.monotonic()
    end = t + seconds
    while t < end:
        carry += per_slice
        n, carry = int(carry), carry - int(carry)
        sock.sendall(b"".join(packets[(sent + k) % 100] for k in range(n)))
        sent += n
        t += 0.01
        time.sleep(max(0.0, t - time.monotonic()))
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="5000,10000,20000,30000,40000")
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    reports: list[tuple[float, dict[str, Any]]] = []
    with hub_process(HUB) as (broker, _):
        watch = client(broker, "stats-watch")
        broker_dropped = [0]

        def on_message(_c: object, _u: object, msg: Any) -> None:
            if msg.topic.startswith("$SYS"):
                broker_dropped[0] = int(msg.payload)
            else:
                reports.append((time.monotonic(), json.loads(msg.payload)))

        watch.on_message = on_message
        watch.subscribe([("bench/bench/stats", 0), ("$SYS/broker/publish/messages/dropped", 0)])
        watch.loop_start()
        sock = raw_publisher(broker.host, broker.port)
        time.sleep(1.5)
        print(f"{'sent msg/s':>10} {'counted':>15} {'behind s':>8} {'hub msg/s':>9} {'hub cpu %':>9}"
              f" {'lag ms':>7} {'dropped':>7} {'broker dropped':>14}")
        for rate in (int(r) for r in args.rates.split(",")):
            dropped_before = broker_dropped[0]
            seen_before = reports[-1][1]["seen"]
            started = time.monotonic()
            sent = send_stage(sock, rate, args.seconds)
            ended = time.monotonic()
            # Wait until the hub has counted every message (or 15 s).
            done_at = None
            while time.monotonic() < ended + 15:
                at, last = reports[-1]
                if last["seen"] - seen_before >= sent:
                    done_at = at
                    break
                time.sleep(0.05)
            at, last = reports[-1]
            during = [r for t, r in reports if started < t <= at]
            counted = last["seen"] - seen_before
            behind = f"{done_at - ended:8.1f}" if done_at else f"{'>15':>8}"
            hub_rate = counted / ((done_at or at) - started)
            time.sleep(1.5)  # the broker's $SYS count comes every second
            print(f"{sent / (ended - started):>10,.0f} {counted:>7,}/{sent:<7,} {behind} {hub_rate:>9,.0f}"
                  f" {max(r['process']['cpu'] for r in during):>9.0f} {max(r['lag'] for r in during):>7.1f}"
                  f" {last['dropped']:>7} {broker_dropped[0] - dropped_before:>14,}")
        sock.close()
        watch.loop_stop()


if __name__ == "__main__":
    main()
