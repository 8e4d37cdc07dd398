#!/usr/bin/env python3
"""Ray on the same work as scripts/bench_dispatch.py: tasks that run `true` in a subprocess.

A local Ray (`ray.init(num_cpus=WORKERS)`: one worker process per cpu slot) runs
`subprocess.run(["true"])` per task, measured the way flota's jobs are:
  - sequential: submit, wait for the result, next (latency p50/p99, tasks/s);
  - 64 in flight: a new task as soon as one ends (latency p50/p99, tasks/s);
  - bulk: N tasks submitted at once, then waited for (tasks/s).
Then the same three again with flota's own job process in each task (`bash -c true`, as
a node's keeper starts it), which splits what the processes cost from what the
orchestration costs.

Ray is a benchmark-only extra (`pip install ray`), never a flota dependency.

    python scripts/bench_ray.py [--workers 8] [--sequential 500] [--jobs 2000] [--json out.json]
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node_agent.process import SHELL  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p99": pct(values, 0.99)}


def measure(ray: Any, job: Any, argv: list[str], opts: argparse.Namespace) -> dict[str, Any]:
    seq: list[float] = []
    t0 = time.perf_counter()
    for _ in range(opts.sequential):
        t = time.perf_counter()
        assert ray.get(job.remote(argv)) == 0
        seq.append((time.perf_counter() - t) * 1000)
    seq_rate = opts.sequential / (time.perf_counter() - t0)

    flight: list[float] = []
    started: dict[Any, float] = {}
    t0 = time.perf_counter()
    submitted = 0
    pending = []
    while submitted < min(opts.inflight, opts.jobs):
        ref = job.remote(argv)
        started[ref] = time.perf_counter()
        pending.append(ref)
        submitted += 1
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            assert ray.get(ref) == 0
            flight.append((time.perf_counter() - started.pop(ref)) * 1000)
            if submitted < opts.jobs:
                new = job.remote(argv)
                started[new] = time.perf_counter()
                pending.append(new)
                submitted += 1
    flight_rate = opts.jobs / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    assert all(code == 0 for code in ray.get([job.remote(argv) for _ in range(opts.jobs)]))
    bulk_rate = opts.jobs / (time.perf_counter() - t0)
    return {
        "sequential": {"n": opts.sequential, "latency_ms": latency(seq), "per_s": seq_rate},
        "inflight": {
            "n": opts.jobs,
            "depth": opts.inflight,
            "latency_ms": latency(flight),
            "per_s": flight_rate,
        },
        "bulk": {"n": opts.jobs, "per_s": bulk_rate},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    try:
        import ray
    except ImportError:
        print("ray is not installed (pip install ray); skipped", file=sys.stderr)
        return 3
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves this machine
    ray.init(num_cpus=opts.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    report: dict[str, Any] = {"version": ray.__version__, "workers": opts.workers}
    try:
        tmp = tempfile.mkdtemp(prefix="flota-ray-")

        @ray.remote
        def job(argv: list[str]) -> int:
            return subprocess.run(argv, cwd=tmp).returncode

        works = {"true": ["true"], "chain": [SHELL, "-c", "true"]}
        ray.get([job.remote(works["true"]) for _ in range(max(50, opts.workers * 8))])  # warm every worker
        for work, argv in works.items():
            report[work] = measure(ray, job, argv, opts)
    finally:
        ray.shutdown()
    print(json.dumps(report, indent=2))
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
