"""Event-to-action latency through the hub's rules (goal: p99 under 5 ms).

    .venv/bin/python bench/hub_rules_latency.py [--events 2000]

Starts Mosquitto and `fleet hub run` (a process of its own) with one rule: an event on
`bench/garage/door` (a JSON field condition) publishes `bench/garage/light/set`. A paho client publishes
the event and waits for the action, one at a time: the latency is from the event's publish to the
action's arrival, both broker hops included; the next event goes when the rule reported its run
finished. The stats job runs too, as it would in the car.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

from hub_common import client, hub_process, percentile

HUB = """
id: bench
workdir: WORKDIR
jobs: ["rules", "stats"]
rules: {
  light: {
    on: { topic: "{home}/garage/door", field: "open", equals: true }
    do: [ { publish: "{home}/garage/light/set", payload: "ON", qos: 0 } ]
  }
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    with hub_process(HUB) as (broker, _):
        c = client(broker, "latency")
        arrived, finished = threading.Event(), threading.Event()

        def on_message(_c: object, _u: object, msg: Any) -> None:
            if msg.topic == "bench/garage/light/set":
                arrived.set()
            elif b'"finished"' in msg.payload:
                finished.set()

        c.on_message = on_message
        c.subscribe([("bench/garage/light/set", 0), ("bench/bench/rules/light", 0)])
        c.loop_start()
        time.sleep(1.0)  # the rules job subscribes
        latencies: list[float] = []
        for n in range(args.events + 50):
            arrived.clear()
            finished.clear()
            t0 = time.perf_counter()
            c.publish("bench/garage/door", json.dumps({"open": True, "n": n}))
            if not arrived.wait(5):
                raise SystemExit(f"event {n}: no action within 5 s")
            if n >= 50:  # the first ones warm up caches and the connection
                latencies.append((time.perf_counter() - t0) * 1000)
            # The next event once this run is over (a trigger during a run is ignored).
            if not finished.wait(5):
                raise SystemExit(f"event {n}: the run did not finish within 5 s")
        c.loop_stop()
    print(f"event→action through the rules ({args.events} events, both broker hops, ms): "
          f"p50 {statistics.median(latencies):.2f}  p90 {percentile(latencies, 90):.2f}  "
          f"p99 {percentile(latencies, 99):.2f}  max {max(latencies):.2f}")


if __name__ == "__main__":
    main()
