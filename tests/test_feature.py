"""`flota feature`: plan (the scripted planner on loopback) -> run as a graph on real
daemons -> merge queue on the node -> the pull request's instructions; the budget stop."""

from __future__ import annotations

import json
from pathlib import Path

from cli.merge.feature import budget_reached
from protos.flota.v1 import coordinator_pb2, types_pb2
from tests.fake_openai import FakeOpenAI, text
from tests.fleet import Fleet, git, make_repo


def test_a_feature_planned_run_merged_and_its_pr_described(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo", "--slots", "2")
    work, remote = make_repo(tmp_path / "repo")
    answer = {
        "tasks": [
            {"id": "coder", "role": "coder", "prompt": "echo 'verbose = 1' > flag.py"},
            {"id": "docs", "role": "docs", "prompt": "echo 'a --verbose flag' > DOCS.md"},
            {"id": "tester", "role": "tester", "prompt": "grep -q verbose flag.py && echo ok > test.txt",
             "depends_on": ["coder"]},
        ]
    }  # fmt: skip
    with FakeOpenAI([text(json.dumps(answer))]) as server:
        result = fleet.flota(
            "feature", "add a verbose flag", "--repo", str(work), "--planner", "openai/planner",
            "--api-base", server.base_url, "--agent", "shell", "--check", "test -e README.md",
            "--yes", "--pr", timeout=300,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    out = result.stdout
    assert "3 tasks from openai/planner" in out and "total cost: $0.0000" in out
    assert "no pull request opened" in out
    branch = next(w for w in out.split() if w.startswith("flota/") and w.endswith("/merged"))
    assert git("show", f"{branch}:flag.py", cwd=remote) == "verbose = 1\n"
    assert git("show", f"{branch}:test.txt", cwd=remote) == "ok\n"
    assert git("show", f"{branch}:DOCS.md", cwd=remote) == "a --verbose flag\n"


def test_feature_without_a_terminal_wants_yes(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo")
    result = fleet.flota("feature", "x", "--repo", str(work), "--planner", "openai/p")
    assert result.returncode == 2 and result.stderr.startswith("flota: ") and "--yes" in result.stderr


def _run(*jobs: tuple[float, float]) -> coordinator_pb2.Run:
    run = coordinator_pb2.Run()
    for budget, cost in jobs:
        run.jobs.append(coordinator_pb2.Job(budget_usd=budget, result=types_pb2.JobResult(cost_usd=cost)))
    return run


def test_the_budget_stop() -> None:
    assert not budget_reached(_run((0, 5), (0, 1)))  # no budget: never reached
    assert not budget_reached(_run((1, 0.5), (1, 1.0)))
    assert budget_reached(_run((1, 1.0), (1, 1.0)))
    assert budget_reached(_run((1, 0.2), (1, 1.9)))
