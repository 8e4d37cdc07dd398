"""A job on a repository that changed nothing, with real daemons and a bare remote: a
success that says "no changes", with no branch pushed unless the run asks for an empty
commit, ranked below the jobs that changed something; cleanup takes it like any other."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.fleet import Fleet, git, make_repo


def _run(fleet: Fleet, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = fleet.flota("--json", "run", *args, "--follow")
    assert "Traceback" not in result.stderr, result.stderr
    return result, json.loads(result.stdout)


def _remote_branches(remote: Path, run_id: str) -> list[str]:
    refs = git("for-each-ref", "--format=%(refname:short)", f"refs/heads/flota/{run_id}/", cwd=remote)
    return refs.split()


def _row(text: str, job_id: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(job_id + " "))


def test_a_job_that_changed_nothing_is_a_success_with_no_changes_and_no_branch(
    fleet: Fleet, tmp_path: Path
) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo", "--slots", "2")
    work, remote = make_repo(tmp_path / "repo")
    answer = "echo 'the bug is in parse(); no file needs to change'"
    result, run = _run(fleet, "--repo", str(work), "-t", answer, "-t", "sleep 1; echo fixed > fix.txt")
    assert result.returncode == 0, result.stderr
    quiet, busy = run["jobs"]
    assert (quiet["status"], busy["status"]) == ("success", "success")
    assert quiet["branch"] == quiet["result"]["branch"] == "" and quiet["result"]["files_modified"] == []
    assert quiet["result"]["base_commit"] == run["base_commit"]
    assert _remote_branches(remote, run["id"]) == [busy["branch"]]  # none for the job that changed nothing

    results = fleet.flota("results", run["id"])
    assert results.returncode == 0, results.stderr
    assert "no changes" in _row(results.stdout, quiet["id"])
    assert "no changes" not in _row(results.stdout, busy["id"])
    status = fleet.flota("status", run["id"], check=True).stdout
    assert "no changes" in _row(status, quiet["id"]) and "no changes" not in _row(status, busy["id"])
    shown = fleet.flota("status", quiet["id"], check=True).stdout
    assert "success (no changes)" in shown
    assert quiet["attempts"][0]["branch"] not in shown  # a branch that was never pushed
    assert "no changes" not in fleet.flota("status", busy["id"], check=True).stdout

    # It was the quicker of the two, but the job that changed something ranks first.
    ranked = fleet.json("compare", run["id"])
    assert [(r["job"], r["no_changes"]) for r in ranked] == [(busy["id"], False), (quiet["id"], True)]
    assert "no changes" in fleet.flota("compare", run["id"], check=True).stdout

    # Nothing to check out; nothing to diff.
    out = fleet.flota("checkout", quiet["id"], cwd=work)
    assert out.returncode == 2 and out.stderr.strip() == (
        f"flota: job {quiet['id']} changed nothing: no branch was pushed "
        f"(its result is its base, {run['base_commit'][:12]})"
    )
    diff = fleet.flota("diff", quiet["id"], cwd=work)
    assert (diff.returncode, diff.stdout, diff.stderr) == (0, "", "")
    assert fleet.json("diff", quiet["id"], cwd=work)["diff"] == ""
    assert git("symbolic-ref", "--short", "HEAD", cwd=work).strip() == "main"

    # Cleanup takes the worktree of a job that pushed nothing like any other.
    reply = fleet.json("cleanup", run["id"])
    assert (reply["worktrees_removed"], reply["nodes_unreachable"]) == (2, [])
    assert _remote_branches(remote, run["id"]) == [busy["branch"]]


def test_allow_empty_pushes_an_empty_commit(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    work, remote = make_repo(tmp_path / "repo")
    result, run = _run(fleet, "--repo", str(work), "--allow-empty", "echo nothing to change")
    assert result.returncode == 0, result.stderr
    (job,) = run["jobs"]
    assert job["status"] == "success" and job["branch"] == f"flota/{run['id']}/1"
    assert _remote_branches(remote, run["id"]) == [job["branch"]]
    assert git("rev-parse", job["branch"], cwd=remote).strip() == job["result"]["head_commit"]
    assert git("rev-parse", f"{job['branch']}^", cwd=remote).strip() == run["base_commit"]
    assert git("diff", "--stat", run["base_commit"], job["branch"], cwd=remote) == ""  # empty
    assert "no changes" in _row(fleet.flota("results", run["id"], check=True).stdout, job["id"])


def test_a_job_without_a_repository_is_unaffected(fleet: Fleet) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    result, run = _run(fleet, "echo hello")
    assert result.returncode == 0, result.stderr
    (job,) = run["jobs"]
    assert job["status"] == "success" and job["result"]["base_commit"] == ""
    assert "no changes" not in fleet.flota("results", run["id"], check=True).stdout
    assert "no changes" not in fleet.flota("status", job["id"], check=True).stdout
