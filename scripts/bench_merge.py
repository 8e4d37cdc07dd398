#!/usr/bin/env python3
"""The merge queue's time per branch: a run of N shell tasks, each writing its own file,
on a local fleet (a coordinator, one node daemon, a bare remote), then `flota merge RUN
--check true`. Per branch: the queue's own figure (fetch, merge and the check, on the
node) and the whole command's wall time divided by N (its merge job's placement, worktree
and push included).

    python scripts/bench_merge.py [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchreport  # noqa: E402

from tests.fleet import Fleet, make_repo  # noqa: E402


def run(quick: bool) -> dict[str, Any]:
    branches = 4 if quick else 10
    rounds = 1 if quick else 3
    queue: list[float] = []
    wall: list[float] = []
    with tempfile.TemporaryDirectory(prefix="flota-bench-") as tmp:
        base = Path(tmp)
        fleet = Fleet(base / "home")
        try:
            fleet.start_coordinator()
            fleet.start_node("n1", "--slots", "4")
            work, _ = make_repo(base / "repo")
            for r in range(rounds):
                tasks = [a for i in range(branches) for a in ("--task", f"echo {r}.{i} > f{r}_{i}.txt")]
                done = fleet.json("run", *tasks, "--repo", str(work), "--follow", timeout=600)
                start = time.monotonic()
                report = fleet.json("merge", done["id"], "--repo", str(work), "--check", "true", timeout=600)
                wall.append((time.monotonic() - start) / branches)
                assert all(o["state"] == "merged" for o in report["outcomes"]), report
                queue.append(sum(float(o["extra"]["seconds"]) for o in report["outcomes"]) / branches)
        finally:
            fleet.close()
    return {
        "branches": branches,
        "rounds": rounds,
        "queue_per_branch_s": queue,
        "wall_per_branch_s": wall,
        "queue_median_s": median(queue),
        "wall_median_s": median(wall),
    }


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    n, r = report["branches"], report["rounds"]
    return [
        (
            f"merge queue per branch, on the node (fetch + merge + check `true`), {n} branches",
            f"{report['queue_median_s'] * 1000:.0f} ms (median of {r})",
        ),
        (
            "flota merge wall time / branches (merge job placed, worktree, push)",
            f"{report['wall_median_s']:.2f} s",
        ),
    ]


if __name__ == "__main__":
    sys.exit(
        benchreport.main(__doc__, run, rows, "4 branches, one round, instead of 10 branches, three rounds")
    )
