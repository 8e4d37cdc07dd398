#!/usr/bin/env python3
"""Dispatch benchmark: real coordinator and node daemons on loopback, real mTLS.

Measures, for jobs with no repo running `true` on 2 local nodes:
  - submit -> start and submit -> result latency (p50/p99) over N sequential jobs;
  - throughput of one run of N jobs;
  - node daemon idle RSS;
  - time from `flota node start` to the node being online in `flota nodes`.

    python scripts/bench_dispatch.py [--jobs 500] [--trials 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.client import Client  # noqa: E402
from protos.flota.v1 import coordinator_pb2 as pb  # noqa: E402
from tests.fleet import Fleet, wait_until  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequential(client: Client, count: int) -> tuple[list[float], list[float]]:
    starts, results = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        run = client.call("SubmitRun", pb.SubmitRunRequest(tasks=[pb.TaskSpec(command="true")]))
        started = None
        for event in client.stream("WatchRun", pb.WatchRunRequest(run_id=run.id)):
            kind = event.WhichOneof("kind")
            if kind == "job" and event.job.status == "running" and started is None:
                started = time.perf_counter()
            elif kind == "run":
                done = time.perf_counter()
                assert event.run.status == "success", event.run
                break
        starts.append(((started or done) - t0) * 1000)
        results.append((done - t0) * 1000)
    return starts, results


def throughput(client: Client, count: int) -> float:
    t0 = time.perf_counter()
    run = client.call("SubmitRun", pb.SubmitRunRequest(tasks=[pb.TaskSpec(command="true")] * count))
    for event in client.stream("WatchRun", pb.WatchRunRequest(run_id=run.id)):
        if event.WhichOneof("kind") == "run":
            assert event.run.status == "success"
            break
    return count / (time.perf_counter() - t0)


def visible_after_start(fleet: Fleet, client: Client, trials: int) -> list[float]:
    """`flota node start` (through the CLI entry point) -> online in ListNodes."""
    state = fleet.join("probe")
    times = []
    for _ in range(trials):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                fleet.python,
                "-m",
                "cli",
                "node",
                "start",
                "--listen",
                "127.0.0.1:0",
                "--no-mdns",
                "--state-dir",
                str(state),
                "--name",
                "probe",
            ],
            env=fleet.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def online() -> bool:
            reply = client.call("ListNodes", pb.ListNodesRequest())
            return any(n.info.name == "probe" and n.state == "online" for n in reply.nodes)

        wait_until(online, timeout=30, what="probe online", period=0.005)
        times.append((time.perf_counter() - t0) * 1000)
        proc.terminate()
        proc.wait(15)

        def gone() -> bool:
            reply = client.call("ListNodes", pb.ListNodesRequest())
            return not any(n.info.name == "probe" and n.state == "online" for n in reply.nodes)

        wait_until(gone, timeout=30, what="probe gone")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flota-bench-") as tmp:
        fleet = Fleet(Path(tmp) / "home")
        try:
            fleet.start_coordinator()
            nodes = [fleet.start_node(f"n{i}", "--slots", str(opts.slots)) for i in (1, 2)]
            os.environ["FLOTA_HOME"] = str(fleet.home)
            client = Client()
            sequential(client, 20)  # warm up: channels, sqlite pages, imports
            time.sleep(2)
            idle_rss = [psutil.Process(p.pid).memory_info().rss / 2**20 for p in nodes]
            coord_rss = psutil.Process(fleet.procs["coordinator"].pid).memory_info().rss / 2**20
            starts, results = sequential(client, opts.jobs)
            rate = throughput(client, opts.jobs)
            visible = visible_after_start(fleet, client, opts.trials)
        finally:
            fleet.close()
    report = {
        "jobs": opts.jobs,
        "submit_to_start_ms": {"p50": statistics.median(starts), "p99": pct(starts, 0.99)},
        "submit_to_result_ms": {"p50": statistics.median(results), "p99": pct(results, 0.99)},
        "throughput_jobs_per_s": rate,
        "node_idle_rss_mb": {"median": statistics.median(idle_rss), "max": max(idle_rss)},
        "coordinator_rss_mb": coord_rss,
        "node_visible_ms": {"median": statistics.median(visible), "min": min(visible), "max": max(visible)},
    }
    s, r, v = report["submit_to_start_ms"], report["submit_to_result_ms"], report["node_visible_ms"]
    rows = [
        ("submit -> start", f"p50 {s['p50']:7.2f} ms   p99 {s['p99']:7.2f} ms"),
        ("submit -> result", f"p50 {r['p50']:7.2f} ms   p99 {r['p99']:7.2f} ms"),
        (
            "throughput (1 run, 2 nodes)",
            f"{rate:7.1f} jobs/s ({opts.jobs} jobs, {opts.slots} slots per node)",
        ),
        ("node daemon idle RSS", f"{statistics.median(idle_rss):7.1f} MB (max {max(idle_rss):.1f})"),
        ("coordinator RSS", f"{coord_rss:7.1f} MB"),
        ("node start -> visible", f"median {v['median']:.0f} ms (min {v['min']:.0f}, max {v['max']:.0f})"),
    ]
    for name, value in rows:
        print(f"{name:28s} {value}")
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
