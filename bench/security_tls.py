"""What TLS and logins cost, on a real Mosquitto run with `fleet broker credentials` files.

For plain MQTT, TLS with EC P-256 certificates and TLS with RSA 2048 ones (`tls-init --rsa`, what an
ESP8266 needs), each with the broker's certificate verified and a per-device login:
1. the node client (pysmartnode.mqtt on the MicroPython unix port, x64) connect time, CONNACK included
   (median and worst of N connects), and the MicroPython heap one live connection holds;
2. a host FleetClient's (aiomqtt) connect time (median of N).

    .venv/bin/python bench/security_tls.py [--n 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.broker import Mosquitto, TLSFiles
from fleet.mqtt import BrokerSettings, FleetClient
from fleet.security import make_credentials, make_tls
from fleet.upy import MicroPython

NODE = """
import asyncio, gc, json, sys
from pysmartnode.mqtt import MQTTClient

async def main(port, tls, n, pw):
    times = []
    held = 0
    for i in range(n):
        gc.collect()
        before = gc.mem_free()
        c = MQTTClient("bench", "localhost", port, "bench", pw, 60, True, tls, log=lambda l, m: None)
        c.start()
        await c.wait_connected()
        times.append(c.last_connect_ms)
        gc.collect()
        held = max(held, before - gc.mem_free())
        await c.close()
    print(json.dumps({"ms": times, "heap": held}))

a = sys.argv
asyncio.run(main(int(a[1]), json.loads(a[2]), int(a[3]), a[4]))
"""


async def host_connects(settings: BrokerSettings, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        async with FleetClient(settings, f"bench-host-{i}"):
            out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-security-"))
    (tmp / "devices").mkdir()
    (tmp / "devices" / "bench.hjson").write_text("{}\n")
    creds = make_credentials(tmp / "devices", tmp / "creds", "bench", hubs=[])
    pw = creds.passwords["bench"]
    print(f"{'link':10} {'node connect ms (median / max)':>32} {'node heap held':>15} {'host connect ms':>16}")
    for kind in ("plain", "tls-ec", "tls-rsa"):
        tls = None if kind == "plain" else make_tls(tmp / kind, ["localhost"], rsa=kind == "tls-rsa")
        broker = Mosquitto(tmp / f"broker-{kind}", password_file=str(tmp / "creds" / "mosquitto.passwd"),
                           acl_file=str(tmp / "creds" / "mosquitto.acl"), extra=["set_tcp_nodelay true"],
                           tls=TLSFiles(str(tls["ca"]), str(tls["cert"]), str(tls["key"])) if tls else None)
        with broker:
            port = broker.tls_port if tls else broker.port
            node_tls = {"ca": str(tls["ca"])} if tls else None
            vm = MicroPython(tmp / "fs", heap="256K")
            script = tmp / "fs" / "bench_tls.py"
            script.parent.mkdir(exist_ok=True)
            script.write_text(NODE)
            run = vm.run(script.name, (str(port), json.dumps(node_tls), str(args.n), pw), timeout=120)
            node = json.loads(run.stdout.strip().splitlines()[-1])
            url = (broker.tls_url if tls else broker.url).replace("://", f"://bench:{pw}@")
            host = asyncio.run(host_connects(BrokerSettings(url, "bench", ca=str(tls["ca"]) if tls else None),
                                             args.n))
        ms = node["ms"]
        print(f"{kind:10} {statistics.median(ms):>20.0f} / {max(ms):<9.0f} {node['heap']:>13} B "
              f"{statistics.median(host):>14.1f}")


if __name__ == "__main__":
    main()
