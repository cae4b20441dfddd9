"""How many virtual nodes one machine holds: `fleet sim` with N generated nodes (plus the 3 example devices).

`.venv/bin/python bench/sim_scale.py [N …] [--steady 20] [--hub]` (default N: 20 50 100). Per N, one run of
`fleet sim`'s own machinery (Mosquitto, the config server as a process, every node a MicroPython unix-port
process) on a scenario that waits until every node is configured, then lets the fleet run `--steady`
seconds. Printed per N:
- start: seconds from the first node started until every node is online with its config applied
  (each node boots, asks, receives, checks, restarts, acks `applied`);
- memory per node: RSS and USS (memory unique to the process) of the node processes, averaged;
- CPU: Mosquitto's, the config server's, all nodes' together and the sim process's, during the boot
  storm and per second of steady state; the fleet's message rate in steady state.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import psutil

from fleet.sim.run import Options, Sim

SCENARIO = """{{ name: "scale", steps: [ {{ expect: "configured", within: {within} }}, {{ wait: {steady} }} ] }}"""


def cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


async def one(n: int, steady: float, hub: bool, folder: Path) -> dict[str, float]:
    scenario = folder / "scale.hjson"
    scenario.write_text(SCENARIO.format(within=60 + 3 * n, steady=steady))
    sim = Sim(Options(folder=folder / "sim", nodes=n, scenario=scenario, hub=hub, broker_kind="mosquitto"))
    me = psutil.Process()
    marks: dict[str, float] = {}

    def nodes() -> list[psutil.Process]:
        return [c for c in me.children(recursive=True) if "micropython" in " ".join(c.cmdline()[:2])]

    def parts() -> dict[str, list[psutil.Process]]:
        broker = [psutil.Process(sim.broker.proc.pid)] if getattr(sim.broker, "proc", None) else []  # type: ignore[union-attr]
        server = [psutil.Process(sim.children["server"].proc.pid)]  # type: ignore[union-attr]
        return {"broker": broker, "server": server, "nodes": nodes(), "sim": [me]}

    async def sample() -> None:
        while not hasattr(sim, "watch") or not sim.nodes or "server" not in sim.children:
            await asyncio.sleep(0.05)
        start = {k: cpu(v) for k, v in parts().items()}
        t0 = time.monotonic()
        while sim.boot_time is None:
            await asyncio.sleep(0.1)
        boot_cpu = {k: cpu(v) - start[k] for k, v in parts().items()}
        marks["start"] = time.monotonic() - t0
        await asyncio.sleep(2)  # the storm's tail (info, discovery) settles
        s0, t1, m0 = {k: cpu(v) for k, v in parts().items()}, time.monotonic(), sim.watch.total
        await asyncio.sleep(max(1.0, steady - 4))
        span = time.monotonic() - t1
        steady_cpu = {k: (cpu(v) - s0[k]) / span for k, v in parts().items()}
        marks["rate"] = (sim.watch.total - m0) / span
        procs = nodes()
        rss = uss = 0
        for p in procs:
            with_info = p.memory_full_info()
            rss, uss = rss + with_info.rss, uss + with_info.uss
        marks["rss"], marks["uss"], marks["count"] = rss / len(procs), uss / len(procs), len(procs)
        for k in boot_cpu:
            marks[f"boot_{k}"], marks[f"steady_{k}"] = boot_cpu[k], steady_cpu[k]

    sampler = asyncio.create_task(sample(), name="bench-sample")  # ends once it has its figures
    await sim.run(asyncio.Event())
    if not sampler.done():
        sampler.cancel()
    if not sim.ok:
        print(f"  N={n}: the run failed: " + "; ".join(f"{r.step.describe()}: {r.detail}"
                                                     for r in sim.results if r.state == "failed"))
    return marks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("nodes", type=int, nargs="*", default=[20, 50, 100])
    p.add_argument("--steady", type=float, default=20.0, help="seconds of steady state measured")
    p.add_argument("--hub", action="store_true", help="run the hub (camera, OBD, uploads) too")
    a = p.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in psutil.getloadavg())}; {psutil.cpu_count()} cores")
    print("| nodes | start (all configured) | RSS / node | USS / node | boot CPU s: broker / server / nodes / sim "
          "| steady CPU %: broker / server / nodes / sim | steady msg/s |")
    print("|---|---|---|---|---|---|---|")
    for n in a.nodes:
        with tempfile.TemporaryDirectory(prefix="sim-scale-") as d:
            m = asyncio.run(one(n, a.steady, a.hub, Path(d)))
        if "start" not in m:
            print(f"| {n} + 3 | not all configured | | | | | |")
            continue
        print(f"| {int(m['count'])} | {m['start']:.1f} s | {m['rss'] / 2**20:.1f} MiB | {m['uss'] / 2**20:.1f} MiB "
              f"| {m['boot_broker']:.2f} / {m['boot_server']:.2f} / {m['boot_nodes']:.1f} / {m['boot_sim']:.2f} "
              f"| {100 * m['steady_broker']:.1f} / {100 * m['steady_server']:.1f} / {100 * m['steady_nodes']:.1f} / "
              f"{100 * m['steady_sim']:.1f} | {m['rate']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
