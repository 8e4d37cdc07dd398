"""`flota merge`: a run's branches through a merge queue that runs as a job on the fleet,
on real daemons with a bare remote; `flota pick`; `--pr` with a stand-in gh on PATH.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.fake_openai import FakeOpenAI, call
from tests.fleet import Fleet, git, make_repo


def _setup(fleet: Fleet, tmp_path: Path, files: dict[str, str] | None = None) -> tuple[Path, Path]:
    fleet.start_coordinator()
    fleet.start_node("solo", "--slots", "2")
    return make_repo(tmp_path / "repo", files)


def _run(fleet: Fleet, work: Path, *tasks: str) -> dict[str, Any]:
    args = [a for t in tasks for a in ("--task", t)]
    result = fleet.flota("--json", "run", *args, "--repo", str(work), "--follow", timeout=180)
    assert "Traceback" not in result.stderr, result.stderr
    run = json.loads(result.stdout)
    assert [j["status"] for j in run["jobs"]] == ["success"] * len(tasks), result.stdout
    return run


def _merge(
    fleet: Fleet, work: Path, run_id: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    result = fleet.flota(
        "--json", "merge", run_id, "--repo", str(work), *args, timeout=300, cwd=work, env=env
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def _states(report: dict[str, Any]) -> dict[str, str]:
    return {o["job"]: o["state"] for o in report["outcomes"]}


def test_three_compatible_branches_give_one_merged_branch_named_in_the_description(
    fleet: Fleet, tmp_path: Path
) -> None:
    work, remote = _setup(fleet, tmp_path)
    run = _run(fleet, work, "echo a > a.txt", "echo b > b.txt", "echo c > c.txt")
    code, report, err = _merge(fleet, work, run["id"], "--check", "true")
    assert code == 0, err
    branch = f"flota/{run['id']}/merged"
    assert report["branch"] == branch
    assert _states(report) == {j["id"]: "merged" for j in run["jobs"]}
    for name, text in (("a.txt", "a\n"), ("b.txt", "b\n"), ("c.txt", "c\n")):
        assert git("show", f"{branch}:{name}", cwd=remote) == text
    assert git("rev-parse", branch, cwd=remote).strip() == report["head"]
    # Real merges: every job's commit (and its trailers) is in the merged history.
    log = git("log", "--format=%H%n%B", branch, cwd=remote)
    for j in run["jobs"]:
        assert j["result"]["head_commit"] in log
        assert f"Flota-Job: {j['id']}" in log
    assert git("log", "--merges", "--oneline", branch, cwd=remote).count("flota: merge") == 3
    # The merges ran in a job on the node, not here.
    merge_job = fleet.json("status", report["merge_jobs"][0])
    assert merge_job["agent"] == "merge" and merge_job["node_name"] == "solo"
    text = Path(report["description"]).read_text()
    for j in run["jobs"]:
        assert j["id"] in text and j["result"]["branch"] in text and j["result"]["head_commit"][:12] in text
    assert "| solo |" in text and "passed" in text


def test_two_tasks_on_the_same_lines_one_merged_one_evicted_naming_the_file(
    fleet: Fleet, tmp_path: Path
) -> None:
    work, remote = _setup(fleet, tmp_path, {"app.txt": "start\n"})
    run = _run(fleet, work, "echo A > app.txt", "echo B > app.txt", "echo other > other.txt")
    first, second, third = (j["id"] for j in run["jobs"])
    code, report, _ = _merge(fleet, work, run["id"])
    assert code == 1  # something was evicted
    assert _states(report) == {first: "merged", second: "evicted", third: "merged"}
    evicted = next(o for o in report["outcomes"] if o["state"] == "evicted")
    assert evicted["kind"] == "conflict" and "app.txt" in evicted["reason"]
    branch = report["branch"]
    assert git("show", f"{branch}:app.txt", cwd=remote) == "A\n"
    assert git("show", f"{branch}:other.txt", cwd=remote) == "other\n"
    text = Path(report["description"]).read_text()
    assert "## Evicted" in text and "app.txt" in text and second in text


def test_a_branch_that_breaks_the_check_is_evicted_the_others_kept(fleet: Fleet, tmp_path: Path) -> None:
    work, remote = _setup(fleet, tmp_path)
    run = _run(fleet, work, "echo a > a.txt", "echo broken > BROKEN", "echo c > c.txt")
    ids = [j["id"] for j in run["jobs"]]
    check = "if test -e BROKEN; then echo 'tests: 1 failed (BROKEN is here)'; exit 1; fi"
    code, report, _ = _merge(fleet, work, run["id"], "--check", check)
    assert code == 1
    assert _states(report) == {ids[0]: "merged", ids[1]: "evicted", ids[2]: "merged"}
    evicted = next(o for o in report["outcomes"] if o["state"] == "evicted")
    assert evicted["kind"] == "check" and "1 failed (BROKEN is here)" in evicted["tail"]
    files = git("ls-tree", "--name-only", report["branch"], cwd=remote).split()
    assert "BROKEN" not in files and {"a.txt", "c.txt"} <= set(files)
    assert "1 failed (BROKEN is here)" in Path(report["description"]).read_text()


def test_fix_with_sends_the_evicted_work_back_once_and_merges_the_fix(fleet: Fleet, tmp_path: Path) -> None:
    work, remote = _setup(fleet, tmp_path, {"app.txt": "start\n"})
    run = _run(fleet, work, "echo A > app.txt", "echo B > app.txt")
    evicted_id = run["jobs"][1]["id"]
    script = [call("write_file", path="app.txt", content="A\nB\n"), call("finish", summary="both kept")]
    with FakeOpenAI(by_model={"gpt-4o": script}) as server:
        code, report, err = _merge(
            fleet, work, run["id"], "--check", "test -s app.txt",
            "--fix-with", "llm:openai/gpt-4o", "--api-base", server.base_url, "--max-fix-rounds", "3",
        )  # fmt: skip
        prompt = json.dumps(server.requests[0]["messages"])
    assert code == 0, err
    assert len(report["fix_jobs"]) == 1  # merged after one fix: no further round
    fix = report["fixes"][evicted_id]
    assert _states(report)[fix] == "merged"
    assert "conflicts in app.txt" in prompt  # the reason
    assert git("show", f"{report['branch']}:app.txt", cwd=remote) == "A\nB\n"
    fix_job = fleet.json("status", fix)
    # The fix started from the merged branch so far (it holds A).
    assert (
        git("merge-base", "--is-ancestor", fix_job["result"]["base_commit"], report["branch"], cwd=remote)
        == ""
    )
    # ... with the evicted work merged in, its conflict committed for the agent to resolve.
    started = git("show", f"{fix_job['result']['base_commit']}:app.txt", cwd=remote)
    assert "<<<<<<<" in started and "A\n" in started and "B\n" in started
    assert fix in Path(report["description"]).read_text()


def test_max_fix_rounds_bounds_the_fixes(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = _setup(fleet, tmp_path)
    run = _run(fleet, work, "echo a > a.txt", "echo broken > BROKEN")
    useless = [call("write_file", path="note.txt", content="tried\n"), call("finish", summary="tried")]
    with FakeOpenAI(by_model={"gpt-4o": useless * 3}) as server:
        code, report, _ = _merge(
            fleet, work, run["id"], "--check", "test ! -e BROKEN",
            "--fix-with", "llm:openai/gpt-4o", "--api-base", server.base_url, "--max-fix-rounds", "2",
        )  # fmt: skip
    assert code == 1
    assert len(report["fix_jobs"]) == 2
    evicted = [o for o in report["outcomes"] if o["state"] == "evicted" and not o["fixed_by"]]
    assert [o["job"] for o in evicted] == [run["jobs"][1]["id"]]


def test_pick_and_pr_through_a_stand_in_gh(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = _setup(fleet, tmp_path)
    result = fleet.flota(
        "--json", "run", "echo x > x.txt", "--models", "m1,m2", "--repo", str(work), "--follow", timeout=180
    )
    run = json.loads(result.stdout)
    loser, winner = (j["id"] for j in run["jobs"])
    assert fleet.flota("pick", run["id"], winner).returncode == 0
    bad = fleet.flota("pick", run["id"], "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("flota: ") and "Traceback" not in bad.stderr
    # Without gh: the branch and the description, to open the pull request by hand.
    code, report, _ = _merge(fleet, work, run["id"], "--pr")
    assert code == 0
    assert list(_states(report)) == [winner]
    assert any(loser in s for s in report["skipped"])
    assert f"branch {report['branch']} into main" in report["pr"] and report["description"] in report["pr"]
    # With gh on PATH: its exact invocation.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_file = tmp_path / "gh-argv.json"
    gh = bin_dir / "gh"
    gh.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(argv_file)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        "print('https://github.com/o/r/pull/7')\n"
    )
    gh.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    git("push", "-q", "origin", "--delete", report["branch"], cwd=work)
    code, report, _ = _merge(fleet, work, run["id"], "--pr", "--forge", "github", "--base", "main", env=env)
    assert code == 0
    assert json.loads(argv_file.read_text()) == [
        "pr", "create", "--title", f"flota: {run['id']}", "--body-file", report["description"],
        "--base", "main", "--head", report["branch"],
    ]  # fmt: skip
    assert report["pr"] == "https://github.com/o/r/pull/7"


def test_bad_input_is_one_line(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = _setup(fleet, tmp_path)
    run = _run(fleet, work, "echo a > a.txt")
    for args in (
        ["--fix-with", "nocolon"],
        ["--pick", "job-x"],
        ["--forge", "bitbucket"],
        ["--max-fix-rounds", "99"],
    ):
        result = fleet.flota("merge", run["id"], "--repo", str(work), *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("flota: ") and "Traceback" not in result.stderr
    missing = fleet.flota("merge", "run-nope", "--repo", str(work))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
