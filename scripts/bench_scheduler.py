#!/usr/bin/env python3
"""Placement benchmark: the pure scheduler (`coordinator.scheduler.schedule`) alone.

1,000 nodes and 10,000 queued jobs with mixed constraints, from a fixed seed: nodes on
4 networks with zone/role labels, 2 to 64 cpus, some with gpus or agent CLIs, some busy;
jobs from 200 runs asking for cpus, memory, gpus, labels, networks, avoided networks,
pins, agent CLIs, exclusive use and spread. A pass places what fits and gives every
other job its reason. Reported: the time of one full pass (median of N), and decisions
per second (queued jobs decided per second of pass), plus the quick pass the coordinator
makes while a busy fleet drains (`explain=False`: placements only).

    python scripts/bench_scheduler.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchreport import emit  # noqa: E402  (the table and JSON of every bench script)

from coordinator.models import JobView, NodeView, Snapshot  # noqa: E402
from coordinator.scheduler import schedule  # noqa: E402

NETWORKS = ("home", "vpn", "public", "lab")
ZONES = ("a", "b", "c")


def snapshot(rng: random.Random, n_nodes: int, n_jobs: int) -> Snapshot:
    nodes = []
    for i in range(n_nodes):
        cpus = rng.choice((2, 4, 8, 16, 32, 64))
        slots = rng.choice((1, 2, 4, 8))
        used = rng.randint(0, slots) if rng.random() < 0.3 else 0
        labels = {"zone": rng.choice(ZONES)}
        if rng.random() < 0.2:
            labels["role"] = rng.choice(("build", "research", "gpu"))
        nodes.append(
            NodeView(
                id=f"node-{i:04d}",
                name=f"host-{i:04d}",
                network=rng.choice(NETWORKS),
                labels=labels,
                slots=slots,
                cpus=float(cpus),
                memory_mb=cpus * 2048,
                gpus=rng.choice((0, 0, 0, 1, 2)),
                used_slots=used,
                used_cpus=min(float(cpus), used * 1.0),
                agents=frozenset(rng.sample(("claude", "aider", "codex"), rng.randint(0, 2))),
                load=rng.random(),
            )
        )
    jobs = []
    for k in range(n_jobs):
        r = rng.random
        jobs.append(
            JobView(
                id=f"job-{k:05d}",
                run_id=f"run-{k % 200:03d}",
                order=float(k),
                cpus=rng.choice((0.0, 0.5, 1.0, 2.0, 4.0)),
                memory_mb=rng.choice((0, 0, 512, 4096, 32768)),
                gpus=1 if r() < 0.05 else 0,
                labels={"zone": rng.choice(ZONES)} if r() < 0.3 else {},
                node=f"host-{rng.randrange(n_nodes):04d}" if r() < 0.02 else "",
                networks=tuple(rng.sample(NETWORKS, 2)) if r() < 0.3 else (),
                avoid_networks=("public",) if r() < 0.2 else (),
                exclusive=r() < 0.02,
                spread=r() < 0.1,
                agent_cli=rng.choice(("claude", "aider")) if r() < 0.1 else "",
            )
        )
    return Snapshot(nodes=tuple(nodes), queue=tuple(jobs))


def timed(snap: Snapshot, repeats: int, explain: bool) -> tuple[list[float], Any]:
    times, plan = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan = schedule(snap, 0.0, explain)
        times.append((time.perf_counter() - t0) * 1000)
    return times, plan


def run(quick: bool, nodes: int = 1000, jobs: int = 10_000) -> dict[str, Any]:
    snap = snapshot(random.Random(2026), nodes, jobs)
    repeats = 5 if quick else 20
    full, plan = timed(snap, repeats, True)
    fast, fast_plan = timed(snap, repeats, False)
    assert plan.placements == fast_plan.placements
    return {
        "nodes": nodes,
        "jobs": jobs,
        "repeats": repeats,
        "placed": len(plan.placements),
        "waiting": len(plan.waiting),
        "full_pass_ms": {"median": statistics.median(full), "min": min(full), "max": max(full)},
        "decisions_per_s": jobs / (statistics.median(full) / 1000),
        "placements_only_ms": {"median": statistics.median(fast), "min": min(fast), "max": max(fast)},
    }


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    full, fast = report["full_pass_ms"], report["placements_only_ms"]
    size = f"{report['jobs']:,} jobs x {report['nodes']:,} nodes"
    return [
        (
            f"full pass, {size}",
            f"median {full['median']:.0f} ms (min {full['min']:.0f}, max {full['max']:.0f}); "
            f"{report['placed']:,} placed, {report['waiting']:,} with a reason",
        ),
        ("decisions per second", f"{report['decisions_per_s']:,.0f}"),
        ("pass without reasons (busy fleet)", f"median {fast['median']:.0f} ms"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 passes instead of 20")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    opts = parser.parse_args()
    report = run(opts.quick)
    emit(rows(report), report, opts.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
