"""`flota checkout`, `flota diff` and `flota retry` against a real fleet: a coordinator and
a node daemon as processes, bare git remotes, the user's repository (issue 14)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protos.contract import RUN_ACTIVE
from tests.fleet import Fleet, git, make_repo, wait_until


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet") / "home")
    try:
        f.start_coordinator()
        f.start_node("solo", "--slots", "3")
        yield f
    finally:
        f.close()


def _run(fleet: Fleet, work: Path, *tasks: str) -> dict[str, Any]:
    args = [a for t in tasks for a in ("-t", t)]
    out = fleet.flota("--json", "run", "--repo", str(work), *args, "--follow")
    assert "Traceback" not in out.stderr, out.stderr
    run: dict[str, Any] = json.loads(out.stdout)
    return run


def _one_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flota: "), out.stderr
    return lines[0]


def _head(work: Path) -> str:
    return git("symbolic-ref", "--short", "HEAD", cwd=work).strip()


# --- checkout -------------------------------------------------------------------------------


def test_checkout_switches_to_the_branch_and_a_worktree_gets_it_too(fleet: Fleet, tmp_path: Path) -> None:
    work, remote = make_repo(tmp_path / "repo", {"README.md": "demo\n"})
    run = _run(fleet, work, "echo hello > notes.txt")
    job = run["jobs"][0]
    branch = job["branch"]
    assert run["status"] == "success" and branch == f"flota/{run['id']}/1"

    out = fleet.flota("checkout", job["id"], cwd=work)
    assert out.returncode == 0, out.stderr
    assert _head(work) == branch
    assert (work / "notes.txt").read_text() == "hello\n"
    assert git("rev-parse", "HEAD", cwd=work).strip() == job["result"]["head_commit"]
    # Fetched through the user's own remote: the branch tracks it.
    assert git("rev-parse", "--abbrev-ref", f"{branch}@{{upstream}}", cwd=work).strip() == f"origin/{branch}"
    assert out.stdout.startswith(f"switched to {branch} in {work}")
    again = fleet.json("checkout", job["id"], "--repo", str(work))  # from elsewhere, by --repo
    assert (again["local"], again["commit"], again["worktree"]) == (
        "unchanged",
        job["result"]["head_commit"],
        False,
    )

    # A local branch behind the result is fast-forwarded; one ahead of it is kept as it is.
    git("switch", "-q", "main", cwd=work)
    git("branch", "-f", branch, "main", cwd=work)
    forward = fleet.json("checkout", job["id"], cwd=work)
    assert (forward["local"], forward["commit"]) == ("fast-forwarded", job["result"]["head_commit"])
    (work / "mine.txt").write_text("mine\n")
    git("add", "mine.txt", cwd=work)
    git("commit", "-qm", "mine", cwd=work)
    mine = git("rev-parse", "HEAD", cwd=work).strip()
    git("switch", "-q", "main", cwd=work)
    ahead = fleet.json("checkout", job["id"], cwd=work)
    assert (ahead["local"], ahead["commit"]) == ("ahead", mine) and _head(work) == branch

    # A repository that does not know the run's remote: fetched by URL, into a new worktree.
    other = tmp_path / "other"
    git("clone", "-q", "-b", "main", str(remote), str(other))
    git("remote", "set-url", "origin", "https://127.0.0.1:9/nowhere.git", cwd=other)
    tree = tmp_path / "wt"
    result = fleet.json("checkout", job["id"], "--worktree", str(tree), cwd=other)
    assert (result["local"], result["path"], result["worktree"]) == ("created", str(tree), True)
    assert (tree / "notes.txt").read_text() == "hello\n"
    assert _head(tree) == branch and _head(other) == "main"  # the repository itself stays put
    assert not (other / "notes.txt").exists()

    # Asked again: the worktree directory is in use, and git says so; nothing changes.
    refused = fleet.flota("checkout", job["id"], "--worktree", str(tree), cwd=other)
    assert refused.returncode == 2
    assert _one_line(refused).startswith(f"flota: cannot check {branch} out in {tree}: ")


def test_checkout_never_clobbers_the_users_work(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo", {"README.md": "demo\n"})
    run = _run(fleet, work, "echo from-the-job > README.md")
    job = run["jobs"][0]
    branch = job["branch"]

    (work / "README.md").write_text("my unsaved work\n")
    out = fleet.flota("checkout", job["id"], cwd=work)
    assert out.returncode == 2
    line = _one_line(out)
    assert line.startswith(f"flota: git would not switch to {branch}: ")
    assert "would be overwritten" in line and "README.md" in line  # git's own reason, with the file
    assert (work / "README.md").read_text() == "my unsaved work\n"
    assert _head(work) == "main" and git("branch", "--list", branch, cwd=work) == ""

    # The branch exists locally with commits of the user's own on it: left alone.
    git("checkout", "-q", "--", "README.md", cwd=work)
    git("switch", "-q", "-c", branch, cwd=work)
    (work / "mine.txt").write_text("mine\n")
    git("add", "mine.txt", cwd=work)
    git("commit", "-qm", "mine", cwd=work)
    mine = git("rev-parse", "HEAD", cwd=work).strip()
    out = fleet.flota("checkout", job["id"], cwd=work)
    assert out.returncode == 2
    assert "have both moved on" in _one_line(out)
    assert git("rev-parse", branch, cwd=work).strip() == mine


def test_checkout_of_a_job_without_a_branch_says_why(fleet: Fleet, tmp_path: Path) -> None:
    out_of_repo = fleet.json("run", "true", "--follow")["jobs"][0]
    out = fleet.flota("checkout", out_of_repo["id"], cwd=tmp_path)
    assert out.returncode == 2
    assert _one_line(out) == (
        f"flota: job {out_of_repo['id']} ran without a repository (flota run --repo): it has no branch"
    )
    work, remote = make_repo(tmp_path / "repo")
    # The job takes its remote away: its work cannot be pushed, so there is no branch.
    job = _run(fleet, work, f"echo made > made.txt; rm -rf {remote}; exit 4")["jobs"][0]
    assert (job["status"], job["branch"]) == ("failed", "")
    out = fleet.flota("checkout", job["id"], cwd=work)
    assert out.returncode == 2
    assert _one_line(out).startswith(f"flota: job {job['id']} ended failed without a branch: ")
    assert _head(work) == "main"

    plain = tmp_path / "plain"
    plain.mkdir()
    ok = _run(fleet, make_repo(tmp_path / "second")[0], "echo made > made.txt")["jobs"][0]
    out = fleet.flota("checkout", ok["id"], cwd=plain)
    assert out.returncode == 2
    assert _one_line(out) == f"flota: {plain} is not in a git repository (--repo DIR names one)"
    out = fleet.flota("diff", ok["run_id"], cwd=plain)
    assert out.returncode == 2 and "is a run; name one of its jobs" in _one_line(out)


# --- diff -----------------------------------------------------------------------------------


def test_diff_is_git_diff_of_base_and_head(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo", {"a.txt": "one\ntwo\n", "b.txt": "gone soon\n"})
    job = _run(fleet, work, "printf 'one\\n2\\nthree\\n' > a.txt; git rm -q b.txt; echo new > c.txt")["jobs"][
        0
    ]
    base, head = job["result"]["base_commit"], job["result"]["head_commit"]
    # The user's clone has neither commit yet: flota diff fetches them.
    assert subprocess.run(["git", "cat-file", "-e", head], cwd=work, capture_output=True).returncode != 0

    pager = {"GIT_PAGER": "sed s/^/PAGED:/", "PAGER": "sed s/^/PAGED:/"}  # no terminal: not used
    out = fleet.flota("diff", job["id"], cwd=work, env=pager)
    assert out.returncode == 0, out.stderr
    plain = git("diff", base, head, cwd=work)
    assert out.stdout == plain and "+three" in plain and "c.txt" in plain
    assert fleet.flota("diff", job["id"], "--no-pager", cwd=work).stdout == plain
    stat = fleet.flota("diff", job["id"], "--stat", cwd=work)
    assert stat.stdout == git("diff", "--stat", base, head, cwd=work)
    as_json = fleet.json("diff", job["id"], cwd=work)
    assert (as_json["base_commit"], as_json["head_commit"], as_json["diff"]) == (base, head, plain)

    # With a terminal, the output goes through the user's pager (git's own pager handling).
    paged = tmp_path / "paged.txt"
    env = {
        **fleet.env,
        "GIT_PAGER": f"cat > {paged}",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "color.ui",
        "GIT_CONFIG_VALUE_0": "never",
    }
    for flags, used in (((), True), (("--no-pager",), False)):
        paged.unlink(missing_ok=True)
        primary, secondary = pty.openpty()
        try:
            proc = subprocess.run(
                [fleet.python, "-m", "cli", "diff", job["id"], *flags],
                cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=secondary, stderr=subprocess.PIPE,
                timeout=60,
            )  # fmt: skip
        finally:
            os.close(secondary)
            os.close(primary)
        assert proc.returncode == 0, proc.stderr
        assert paged.exists() is used
        if used:
            assert paged.read_text() == plain


# --- retry ----------------------------------------------------------------------------------


def _fails_once(marker: Path, then: str = "echo fixed > fixed.txt") -> str:
    """A task that fails the first time it runs and does `then` from the second time on."""
    return f"if [ -e {marker} ]; then {then}; else touch {marker}; echo first try >&2; exit 3; fi"


def test_retry_of_a_failed_job_makes_attempt_2_which_succeeds(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo")
    run = _run(fleet, work, _fails_once(tmp_path / "marker"))
    job = run["jobs"][0]
    assert (run["status"], job["status"]) == ("failed", "failed")

    out = fleet.flota("--json", "retry", job["id"], "--follow")
    assert out.returncode == 0, out.stderr
    final = json.loads(out.stdout)
    retried = final["jobs"][0]
    assert (final["status"], retried["status"]) == ("success", "success")
    assert [(a["number"], a["status"]) for a in retried["attempts"]] == [(1, "failed"), (2, "success")]
    branch = f"flota/{run['id']}/1-a2"  # a new attempt pushes its own branch
    assert retried["attempts"][1]["branch"] == retried["branch"] == branch
    assert fleet.json("status", run["id"])["status"] == "success"
    fleet.flota("checkout", job["id"], cwd=work, check=True)
    assert _head(work) == branch and (work / "fixed.txt").read_text() == "fixed\n"
    assert "first try" in fleet.flota("logs", job["id"]).stderr + fleet.flota("logs", job["id"]).stdout


def test_retry_failed_takes_only_the_jobs_that_did_not_succeed(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo")
    run = _run(fleet, work, "true", _fails_once(tmp_path / "marker"), "exit 5")
    assert [j["status"] for j in run["jobs"]] == ["success", "failed", "failed"]
    ids = [j["id"] for j in run["jobs"]]

    reply = fleet.json("retry", run["id"], "--failed")
    # Running again; shown as waiting while none of its jobs has a node yet.
    assert reply["retried"] == ids[1:] and reply["run"]["status"] == "waiting"
    final = wait_until(
        lambda: (r := fleet.json("status", run["id"]))["status"] not in RUN_ACTIVE and r,
        60,
        "the run to end again",
    )
    assert final["status"] == "failed"  # job 3 fails again, as it always does
    attempts = [[a["status"] for a in j["attempts"]] for j in final["jobs"]]
    assert attempts == [["success"], ["failed", "success"], ["failed", "failed"]]
    out = fleet.flota("retry", run["id"], "--failed")
    assert out.returncode == 0 and f"1 job: {ids[2]} queued again" in out.stdout


def test_retry_of_a_running_job_is_refused_and_a_watcher_sees_a_retry(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo")
    go = tmp_path / "go"
    before = {r["id"] for r in fleet.json("status", "--limit", "1000")}
    follow = subprocess.Popen(
        [fleet.python, "-m", "cli", "run", "--repo", str(work), "--follow",
         "-t", _fails_once(tmp_path / "marker"),
         "-t", f"for i in $(seq 600); do [ -e {go} ] && exit 0; sleep 0.1; done; exit 9"],
        env=fleet.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        new = wait_until(lambda: [r for r in fleet.json("status") if r["id"] not in before], 30, "the run")
        run_id = new[0]["id"]
        first, second = f"{run_id}.1", f"{run_id}.2"
        wait_until(lambda: fleet.json("status", first)["status"] == "failed", 30, "job 1 failed")
        wait_until(lambda: fleet.json("status", second)["status"] == "running", 30, "job 2 running")

        refused = fleet.flota("retry", second)
        assert refused.returncode == 2
        assert (
            _one_line(refused)
            == f"flota: job {second} is still running; wait for it to end, or cancel it first"
        )
        refused = fleet.flota("retry", run_id)
        assert refused.returncode == 2 and f"still has job {second} running" in _one_line(refused)
        assert len(fleet.json("status", second)["attempts"]) == 1

        assert fleet.json("retry", first)["retried"] == [first]
        wait_until(lambda: fleet.json("status", first)["status"] == "success", 30, "job 1 retried")
        go.touch()
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert follow.returncode == 0, err  # the run ended in success after all
    # The watcher saw job 1 fail, go back to the queue, and succeed.
    seen = [
        words[words.index(first) + 1]
        for words in (line.split() for line in out.splitlines())
        if first in words
    ]
    assert "failed" in seen and "success" in seen
    assert seen.index("failed") < seen.index("queued:", seen.index("failed")) < seen.index("success")
