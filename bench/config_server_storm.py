"""Boot storm: N simulated devices ask the config server for their 10-component configs at once.

    .venv/bin/python bench/config_server_storm.py [--devices 1000] [--max 1024]

Starts a Mosquitto and `fleet server run` (a process of its own, so its CPU time is its own; with
`--servers 2`, two of them sharing the requests through `$share`), writes N
device files (10 components each, a shared include), connects N lightweight clients, then has all of
them request at the same moment. Each client is the node's side of docs/PROTOCOL.md section 4 on a bare
asyncio MQTT 3.1.1 connection (a few dozen lines below; 1,000 full paho clients would measure paho,
not the server): it takes the pieces, reassembles and checks the hash, and acks. Prints the time until
all are configured, p50/p99 request-to-config latency, and the server's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config_server.pieces import Reassembler
from fleet import topics
from fleet.broker import Mosquitto
from tests.fakebroker import mqtt_length, mqtt_str, publish_packet

REPO = Path(__file__).resolve().parent.parent

DEVICE = """# bench device {n}
{{
  name: Bench node {n}
  platform: esp32
  include: ["include/common.hjson"]
  components: {{
    _order: ["i2c", "climate", "lamp", "fan", "heater", "bell", "led", "thermostat"]
    i2c: {{package: ".machine.i2c", component: "I2C", constructor_args: {{pin_scl: 22, pin_sda: 21}}}}
    climate: {{package: ".sensors.bme280", component: "BME280", constructor_args: {{i2c: "i2c", interval: {iv}}}}}
    lamp: {{package: ".machine.relay", component: "Relay", constructor_args: {{pin: 25, friendly_name: "Lamp {n}"}}}}
    fan: {{package: ".machine.relay", component: "Relay", constructor_args: {{pin: 26}}}}
    heater: {{package: ".machine.relay", component: "Relay", constructor_args: {{pin: 27, restore: false}}}}
    bell: {{package: ".machine.button", component: "Button", constructor_args: {{pin: 4, long_press: 1500}}}}
    led: {{package: ".machine.led", component: "LED", constructor_args: {{pin: 2, active_low: true}}}}
    thermostat: {{
      package: .devices.thermostat
      component: Thermostat
      constructor_args: {{sensor: "climate", switch: "heater", target: 20.5, hysteresis: 0.5}}
    }}
  }}
}}
"""


def write_registry(folder: Path, n: int) -> list[str]:
    """N device files of 10 components each (8 own, `ram` and `stats` from the shared include)."""
    shutil.copytree(REPO / "examples" / "devices" / "include", folder / "include")
    ids = [f"bench{i:04d}" for i in range(n)]
    for i, device in enumerate(ids):
        (folder / f"{device}.hjson").write_text(DEVICE.format(n=i, iv=20 + i % 40))
    return ids


# A bare MQTT 3.1.1 client: just what a node needs for the exchange (the packet helpers are the test
# fake broker's).

def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + mqtt_length(len(body)) + body


class BareNode:
    def __init__(self, host: str, port: int, home: str, device: str, max_bytes: int) -> None:
        self.host, self.port, self.home, self.device, self.max = host, port, home, device, max_bytes
        self.assembler = Reassembler()
        self.pid = 0
        self.asked = 0.0
        self.configured = 0.0
        self.done = asyncio.Event()

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(_packet(0x10, mqtt_str("MQTT") + bytes([4, 0x02]) + (120).to_bytes(2, "big")
                                  + mqtt_str(f"bench-{self.device}")))
        head = await self.reader.readexactly(4)
        if head[0] != 0x20 or head[3] != 0:
            raise RuntimeError(f"{self.device}: CONNACK {head!r}")
        reply = topics.config_reply(self.home, self.device)
        self.writer.write(_packet(0x82, self._next_pid().to_bytes(2, "big") + mqtt_str(reply) + b"\x01"))
        await self._read()  # SUBACK

    def _next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    def publish(self, topic: str, payload: bytes) -> None:
        self.writer.write(publish_packet(topic, payload, qos=1, pid=self._next_pid()))

    async def _read(self) -> tuple[int, bytes]:
        first = (await self.reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await self.reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, await self.reader.readexactly(length)

    async def run(self, go: asyncio.Event) -> None:
        await go.wait()
        self.asked = time.perf_counter()
        request = json.dumps({"v": None, "platform": "esp32", "max": self.max, "fw": "0.1.0"}).encode()
        self.publish(topics.config_request(self.home, self.device), request)
        while True:
            kind, body = await self._read()
            if kind >> 4 != 3:
                continue  # PUBACKs of our own publishes
            tlen = int.from_bytes(body[:2], "big")
            qos = (kind >> 1) & 3
            payload = body[2 + tlen + (2 if qos else 0):]
            if qos:
                self.writer.write(bytes([0x40, 2]) + body[2 + tlen : 4 + tlen])
            got = self.assembler.feed(payload)
            if got is not None:
                self.configured = time.perf_counter()
                ack = json.dumps({"v": got.v, "state": "accepted"}).encode()
                self.publish(topics.config_ack(self.home, self.device), ack)
                await self.writer.drain()
                self.done.set()
                return


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def storm(args: argparse.Namespace, work: Path) -> None:
    folder = work / "devices"
    ids = write_registry(folder, args.devices)
    broker = Mosquitto(work / "mosquitto").start()
    home = "bench"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    servers = [subprocess.Popen(
        [sys.executable, *profile, "-m", "fleet.cli", "server", "run", "--devices", str(folder), "--state",
         str(work / "state.sqlite"), "--broker", broker.url, "--home", home, "--server-id", f"bench{k}"],
        env=env, stderr=(work / f"server{k}.log").open("w"), text=True) for k in range(args.servers)]
    try:
        started = time.perf_counter()
        for k in range(args.servers):
            line = ""
            while "config server" not in line:  # "config server bench0: N devices …" once it is connected
                await asyncio.sleep(0.05)
                line = (work / f"server{k}.log").read_text()
        print(f"{args.servers} server process(es) up with {args.devices} devices in "
              f"{time.perf_counter() - started:.2f} s")
        nodes = [BareNode(broker.host, broker.port, home, d, args.max) for d in ids]
        for i in range(0, len(nodes), 100):
            await asyncio.gather(*(n.connect() for n in nodes[i : i + 100]))
        print(f"{len(nodes)} clients connected")
        go = asyncio.Event()
        tasks = [asyncio.create_task(n.run(go), name=f"bench-{n.device}") for n in nodes]
        await asyncio.sleep(0.5)
        cpu0 = [cpu_seconds(p.pid) for p in servers]
        broker0, own0 = cpu_seconds(broker.proc.pid), time.process_time()
        t0 = time.perf_counter()
        go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        total = time.perf_counter() - t0
        await asyncio.sleep(0.3)  # the acks
        cpu = [cpu_seconds(p.pid) - c for p, c in zip(servers, cpu0, strict=True)]
        broker_cpu, own_cpu = cpu_seconds(broker.proc.pid) - broker0, time.process_time() - own0
        latencies = sorted((n.configured - n.asked) * 1000 for n in nodes)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(f"boot storm: {len(nodes)} devices × 10 components (max {args.max} B pieces): all configured in "
              f"{total:.2f} s; latency p50 {statistics.median(latencies):.0f} ms, p99 {p99:.0f} ms, "
              f"max {latencies[-1]:.0f} ms; server CPU {' + '.join(f'{c:.2f}' for c in cpu)} s "
              f"({sum(cpu) / total * 100:.0f} % of one core); "
              f"Mosquitto CPU {broker_cpu:.2f} s, the clients' {own_cpu:.2f} s")
        for n in nodes:
            n.writer.close()
    except BaseException:
        print((work / "server0.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        for p in servers:
            p.send_signal(signal.SIGINT)  # a clean stop (cProfile writes its stats then)
        for p in servers:
            p.wait(20)
        broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--max", type=int, default=1024, help="the nodes' largest piece (bytes)")
    parser.add_argument("--servers", type=int, default=1, help="server processes sharing the work ($share)")
    parser.add_argument("--profile", metavar="FILE", help="run the server under cProfile, write its stats here")
    args = parser.parse_args()
    # Each client is a socket, and Mosquitto (started from here) inherits the limit too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.devices * 2 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    with tempfile.TemporaryDirectory(prefix="fleet-storm-") as work:
        os.chmod(work, 0o755)
        asyncio.run(storm(args, Path(work)))


if __name__ == "__main__":
    main()
