#!/usr/bin/env python3
"""A 3-task plan of shell tasks on a local fleet (a coordinator, two node daemons of two
slots, a bare remote), from `flota run --plan plan.yaml --follow` to the last task's end,
against the same three tasks run by hand one after another (`flota run TASK --follow`
three times, the coder's branch fetched and given as `--ref` to the other two). The
plan: a coder, then a tester and a docs task, both after the coder (each starts from the
coder's branch); every task sleeps SLEEP_S, then writes a file.

    python scripts/bench_plan.py [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchreport  # noqa: E402

from tests.fleet import Fleet, git, make_repo  # noqa: E402

SLEEP_S = 1.0
TASKS = (
    ("coder", f"sleep {SLEEP_S}; echo code > code.py", []),
    ("tester", f"sleep {SLEEP_S}; cat code.py > tested.txt", ["coder"]),
    ("docs", f"sleep {SLEEP_S}; cat code.py > DOCS.md", ["coder"]),
)


def _timed(fleet: Fleet, *args: str) -> float:
    start = time.monotonic()
    fleet.flota(*args, "--follow", check=True, timeout=300)
    return time.monotonic() - start


def _by_hand(fleet: Fleet, work: Path) -> float:
    """The three tasks as a user would chain them: the coder's run, its branch fetched,
    then the tester and the docs task one after the other, each on the coder's commit."""
    start = time.monotonic()
    (_, coder, _), *rest = TASKS
    done = fleet.json("run", coder, "--repo", str(work), "--follow", timeout=300)
    branch = done["jobs"][0]["branch"]
    git("fetch", "-q", "origin", branch, cwd=work)
    for _, prompt, _ in rest:
        fleet.flota(
            "run", prompt, "--repo", str(work), "--ref", "FETCH_HEAD", "--follow", check=True, timeout=300
        )
    return time.monotonic() - start


def run(quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 5
    graph: list[float] = []
    by_hand: list[float] = []
    with tempfile.TemporaryDirectory(prefix="flota-bench-") as tmp:
        base = Path(tmp)
        fleet = Fleet(base / "home")
        try:
            fleet.start_coordinator()
            for name in ("n1", "n2"):
                fleet.start_node(name, "--slots", "2")
            work, _ = make_repo(base / "repo")
            plan = base / "plan.yaml"
            tasks = [{"id": i, "prompt": p, "depends_on": d} for i, p, d in TASKS]
            plan.write_text(yaml.safe_dump({"tasks": tasks}))
            fleet.flota("run", "true", "--repo", str(work), "--follow", check=True)  # warm mirrors
            for _ in range(rounds):
                graph.append(_timed(fleet, "run", "--plan", str(plan), "--repo", str(work)))
                by_hand.append(_by_hand(fleet, work))
        finally:
            fleet.close()
    return {
        "rounds": rounds,
        "sleep_s": SLEEP_S,
        "graph_s": graph,
        "by_hand_s": by_hand,
        "graph_median_s": median(graph),
        "by_hand_median_s": median(by_hand),
    }


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    g, h = report["graph_median_s"], report["by_hand_median_s"]
    work = 3 * report["sleep_s"]
    return [
        ("3-task plan, run --plan -> last task", f"{g:.2f} s (median of {report['rounds']})"),
        ("same 3 tasks by hand, one after another", f"{h:.2f} s"),
        ("by hand / plan", f"x{h / g:.2f}"),
        (
            "critical path of the plan (2 tasks)",
            f"{2 * report['sleep_s']:.1f} s of sleep; all tasks {work:.1f} s",
        ),
        ("graph overhead over its critical path", f"{g - 2 * report['sleep_s']:.2f} s"),
    ]


if __name__ == "__main__":
    sys.exit(benchreport.main(__doc__, run, rows, "two rounds instead of five"))
