"""`flota run --plan`: a run whose jobs form a graph, on real daemons with a bare remote.

A task starts from its dependencies' results (one: its branch; several: merged on the
node, a conflict failing the task naming the files); a failed dependency cancels its
dependents; a coordinator restarted mid-graph loses nothing and runs nothing twice.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.fake_openai import FakeOpenAI, text
from tests.fleet import Fleet, git, make_repo, wait_until


def _fleet(
    fleet: Fleet, tmp_path: Path, files: dict[str, str] | None = None, slots: int = 2
) -> tuple[Path, Path]:
    """A coordinator, one node, and a repository with its bare remote."""
    fleet.start_coordinator()
    fleet.start_node("solo", "--slots", str(slots))
    return make_repo(tmp_path / "repo", files)


def _plan(path: Path, tasks: list[dict[str, Any]], **defaults: Any) -> Path:
    path.write_text(yaml.safe_dump({**defaults, "tasks": tasks}))
    return path


def _run(fleet: Fleet, plan: Path, work: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = fleet.flota("--json", "run", "--plan", str(plan), "--repo", str(work), "--follow", timeout=180)
    assert "Traceback" not in result.stderr, result.stderr
    return result, json.loads(result.stdout)


def _jobs(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {j["name"]: j for j in run["jobs"]}


def _show(remote: Path, branch: str, path: str) -> str:
    return git("show", f"{branch}:{path}", cwd=remote)


def test_a_tester_starts_from_the_coders_branch_and_two_results_are_merged(
    fleet: Fleet, tmp_path: Path
) -> None:
    work, remote = _fleet(fleet, tmp_path)
    plan = _plan(
        tmp_path / "plan.yaml",
        [
            {"id": "coder", "role": "coder", "prompt": "echo 'def f(): return 1' > code.py"},
            {"id": "docs", "role": "docs", "prompt": "echo 'f returns 1' > DOCS.md"},
            {"id": "tester", "role": "tester", "prompt": "cat code.py > seen.txt", "depends_on": ["coder"]},
            {
                "id": "reviewer",
                "role": "reviewer",
                "prompt": "cat code.py DOCS.md seen.txt > review.txt",
                "depends_on": ["tester", "docs"],
            },
        ],
    )
    result, run = _run(fleet, plan, work)
    assert result.returncode == 0, result.stderr
    jobs = _jobs(run)
    assert {n: j["status"] for n, j in jobs.items()} == dict.fromkeys(jobs, "success")
    coder, tester, reviewer = jobs["coder"], jobs["tester"], jobs["reviewer"]
    assert tester["depends_on"] == [coder["id"]] and tester["role"] == "tester"
    assert sorted(reviewer["depends_on"]) == sorted([tester["id"], jobs["docs"]["id"]])
    # The tester saw the coder's file in its worktree, and built on the coder's commit.
    assert _show(remote, tester["branch"], "seen.txt") == "def f(): return 1\n"
    assert tester["result"]["base_commit"] == coder["result"]["head_commit"]
    assert (
        git("merge-base", "--is-ancestor", coder["result"]["head_commit"], tester["branch"], cwd=remote) == ""
    )
    # The reviewer started from both of its dependencies' results, merged.
    assert (
        _show(remote, reviewer["branch"], "review.txt")
        == "def f(): return 1\nf returns 1\ndef f(): return 1\n"
    )
    for dep in (tester, jobs["docs"]):
        git("merge-base", "--is-ancestor", dep["result"]["head_commit"], reviewer["branch"], cwd=remote)
    assert reviewer["result"]["files_modified"] == ["review.txt"]  # its own change, from the merged base


def test_conflicting_dependencies_fail_the_task_naming_the_files(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = _fleet(fleet, tmp_path, {"shared.txt": "base\n"})
    plan = _plan(
        tmp_path / "plan.yaml",
        [
            {"id": "left", "prompt": "echo left > shared.txt", "files": ["shared.txt"]},
            {"id": "right", "prompt": "echo right > shared.txt", "files": ["*.txt"]},
            {"id": "join", "prompt": "cat shared.txt", "depends_on": ["left", "right"]},
        ],
    )
    result, run = _run(fleet, plan, work)
    assert result.returncode == 1
    # Said at plan time: the two may run at once and both own shared.txt.
    assert (
        "flota: warning: " in result.stderr and "'left' and 'right' may run at the same time" in result.stderr
    )
    assert "shared.txt" in result.stderr
    jobs = _jobs(run)
    assert (jobs["left"]["status"], jobs["right"]["status"], jobs["join"]["status"]) == (
        "success",
        "success",
        "failed",
    )
    error = jobs["join"]["result"]["error"]
    assert "conflict" in error and "shared.txt" in error, error
    assert run["status"] == "failed"


def test_a_failed_dependency_cancels_its_dependents(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = _fleet(fleet, tmp_path, slots=1)
    ran, gate = tmp_path / "ran", tmp_path / "gate"
    plan = _plan(
        tmp_path / "plan.yaml",
        [
            {"id": "coder", "prompt": f"test -e {gate} || exit 3; echo c > c.txt"},
            {"id": "tester", "prompt": f"touch {ran}/tester; cat c.txt", "depends_on": ["coder"]},
            {"id": "docs", "prompt": f"touch {ran}/docs", "depends_on": ["tester"]},
        ],
    )
    ran.mkdir()
    result, run = _run(fleet, plan, work)
    assert result.returncode == 1
    jobs = _jobs(run)
    assert [jobs[n]["status"] for n in ("coder", "tester", "docs")] == ["failed", "cancelled", "cancelled"]
    assert jobs["tester"]["result"]["error"] == "dependency coder failed"
    assert jobs["docs"]["result"]["error"] == "dependency tester was cancelled (dependency coder failed)"
    assert jobs["tester"]["attempts"] == [] and list(ran.iterdir()) == []
    assert run["status"] == "failed"
    shown = fleet.flota("status", run["id"], check=True).stdout
    assert "dependency coder failed" in shown

    # Retried, the jobs that did not succeed run again in the graph's order.
    gate.touch()
    again = fleet.flota("--json", "retry", run["id"], "--failed", "--follow", timeout=180)
    assert again.returncode == 0, again.stderr
    jobs = _jobs(json.loads(again.stdout))
    assert {n: j["status"] for n, j in jobs.items()} == dict.fromkeys(jobs, "success")
    assert sorted(p.name for p in ran.iterdir()) == ["docs", "tester"]
    assert jobs["tester"]["result"]["base_commit"] == jobs["coder"]["result"]["head_commit"]


def test_a_coordinator_restarted_mid_graph_loses_nothing_and_runs_nothing_twice(
    fleet: Fleet, tmp_path: Path
) -> None:
    work, remote = _fleet(fleet, tmp_path)
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    runs.mkdir()
    # Each task leaves a mark per run of it; the coder waits at the gate.

    def mark(name: str) -> str:
        return f"echo x >> {runs}/{name}"

    plan = _plan(
        tmp_path / "plan.yaml",
        [
            {
                "id": "coder",
                "prompt": f"{mark('coder')}; while [ ! -e {gate} ]; do sleep 0.1; done; echo c > c.txt",
            },
            {"id": "tester", "prompt": f"{mark('tester')}; cat c.txt > t.txt", "depends_on": ["coder"]},
            {"id": "docs", "prompt": f"{mark('docs')}; cat c.txt t.txt > d.txt", "depends_on": ["tester"]},
        ],
    )
    submitted = fleet.json("run", "--plan", str(plan), "--repo", str(work))
    run_id = submitted["id"]
    assert [j["status"] for j in submitted["jobs"]] == ["queued", "waiting", "waiting"]
    assert [j["wait_reason"] for j in submitted["jobs"][1:]] == ["waiting on coder", "waiting on tester"]

    def coder_running() -> bool:
        return (runs / "coder").exists()

    wait_until(coder_running, what="the coder to start")
    shown = fleet.json("status", run_id)
    assert [j["status"] for j in shown["jobs"]][1:] == ["waiting", "waiting"]
    table = fleet.flota("status", run_id, check=True).stdout
    assert "AFTER" in table and "waiting on coder" in table and "waiting on tester" in table
    # The event stream shows the graph: who waits, on which jobs.
    lines = fleet.flota("--json", "events", "--snapshot", check=True).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    waiting = {
        e["job"]["name"]: e["job"]["depends_on"]
        for e in events
        if e.get("job", {}).get("status") == "waiting"
    }
    assert waiting == {"tester": [f"{run_id}.1"], "docs": [f"{run_id}.2"]}
    assert fleet.stop("coordinator", signal.SIGKILL) is not None
    fleet.start_coordinator()
    gate.touch()

    def ended() -> dict[str, Any] | None:
        data = fleet.json("status", run_id)
        return data if data["status"] not in ("running", "waiting") else None

    final = wait_until(ended, timeout=120, what="the run to end")
    assert final["status"] == "success", final
    jobs = _jobs(final)
    # One attempt each, one mark each: nothing ran twice, nothing was lost.
    assert {n: len(j["attempts"]) for n, j in jobs.items()} == {"coder": 1, "tester": 1, "docs": 1}
    assert {p.name: p.read_text() for p in runs.iterdir()} == {"coder": "x\n", "tester": "x\n", "docs": "x\n"}
    assert _show(remote, jobs["docs"]["branch"], "d.txt") == "c\nc\n"


def test_a_plan_from_the_planner_runs_as_a_graph(fleet: Fleet, tmp_path: Path) -> None:
    work, remote = _fleet(fleet, tmp_path)
    answer = {
        "tasks": [
            {"id": "coder", "role": "coder", "prompt": "echo 'verbose = 1' > flag.py", "files": ["flag.py"]},
            {"id": "tester", "role": "tester", "prompt": "grep -q verbose flag.py && echo ok > test.txt",
             "depends_on": ["coder"], "files": ["test.txt"]},
        ]
    }  # fmt: skip
    plan = tmp_path / "plan.yaml"
    with FakeOpenAI([text(json.dumps(answer))]) as server:
        made = fleet.flota(
            "plan", "add a verbose flag", "--repo", str(work), "--planner", "openai/planner",
            "--api-base", server.base_url, "--agent", "shell", "-o", str(plan), check=True,
        )  # fmt: skip
    assert "2 tasks from openai/planner" in made.stdout
    result, run = _run(fleet, plan, work)
    assert result.returncode == 0, result.stderr
    jobs = _jobs(run)
    assert (jobs["coder"]["role"], jobs["tester"]["role"]) == ("coder", "tester")
    assert _show(remote, jobs["tester"]["branch"], "test.txt") == "ok\n"
