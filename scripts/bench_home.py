#!/usr/bin/env python3
"""A dial-home link against a direct one, side by side in one run: a real coordinator and
two node daemons on loopback, one dialed by the coordinator ("direct"), one that dials
home (`--dial-home`). Jobs of `true` pinned to each in turn:
  - sequential submit -> result latency on each (p50/p99), alternating the two;
  - idle CPU of each node daemon and of the coordinator over a quiet window (heartbeats
    once a second: the cost of keeping each kind of link).

    python scripts/bench_home.py [--quick] [--json out.json]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchreport  # noqa: E402
from bench_dispatch import one_job  # noqa: E402
from bench_ray import latency  # noqa: E402

from cli.client import Client  # noqa: E402
from protos.flota.v1 import coordinator_pb2 as pb  # noqa: E402
from tests.fleet import Fleet, wait_until  # noqa: E402

KINDS = ("direct", "home")


def cpu_ms(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return (t.user + t.system) * 1000


def run(quick: bool) -> dict[str, Any]:
    n, idle_s = (100, 10.0) if quick else (400, 30.0)
    with tempfile.TemporaryDirectory(prefix="flota-bench-") as tmp:
        fleet = Fleet(Path(tmp) / "home")
        try:
            fleet.start_coordinator()
            nodes = {
                "direct": fleet.start_node("direct", "--slots", "4"),
                "home": fleet.start_node("home", "--slots", "4", "--dial-home"),
            }
            wait_until(lambda: fleet.nodes()["home"].get("link") == "home", what="the home link")
            os.environ["FLOTA_HOME"] = str(fleet.home)
            client = Client()
            pins = {k: pb.PlacementSpec(node=k) for k in KINDS}
            for _ in range(20):  # warm up both
                for k in KINDS:
                    one_job(client, placement=pins[k])
            times: dict[str, list[float]] = {k: [] for k in KINDS}
            for _ in range(n):
                for k in KINDS:
                    times[k].append(one_job(client, placement=pins[k]))
            client.close()
            procs = {k: psutil.Process(p.pid) for k, p in nodes.items()}
            procs["coordinator"] = psutil.Process(fleet.procs["coordinator"].pid)
            before = {k: cpu_ms(p) for k, p in procs.items()}
            time.sleep(idle_s)
            idle = {k: (cpu_ms(p) - before[k]) / idle_s for k, p in procs.items()}  # ms of CPU per second
        finally:
            fleet.close()
    return {"n": n, "latency_ms": {k: latency(v) for k, v in times.items()}, "idle_cpu_ms_per_s": idle}


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    lat, idle = report["latency_ms"], report["idle_cpu_ms_per_s"]
    out = []
    for k in KINDS:
        out.append((f"submit -> result, {k} link", f"p50 {lat[k]['p50']:.2f} ms  p99 {lat[k]['p99']:.2f} ms"))
    out.append(("home / direct, p50", f"x{lat['home']['p50'] / lat['direct']['p50']:.2f}"))
    for k in KINDS:
        out.append((f"idle node daemon CPU, {k}", f"{idle[k]:.2f} ms per second"))
    out.append(("idle coordinator CPU (both links)", f"{idle['coordinator']:.2f} ms per second"))
    return out


def main() -> int:
    return benchreport.main(__doc__, run, rows, "100 jobs each, a 10 s idle window")


if __name__ == "__main__":
    raise SystemExit(main())
