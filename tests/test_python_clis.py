"""The real Python agent CLIs (architect-cli, aider) through `flota run --agent NAME` on a
local fleet, against a scripted OpenAI-compatible server on loopback: the edit lands on
the job's branch without the CLI's own files, its counts are read where it reports them,
nothing prompts, and a timeout or a cancel stops the CLI and its children."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent_clis import FLOTA_YAML, MODEL, edit_script, leftovers, node_env, require
from tests.fake_openai import FakeOpenAI, text
from tests.fleet import Fleet, git, make_repo, wait_until
from tests.real_model import smollm2_server

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        f.start_coordinator()
        f.start_node("n1", env=node_env(tmp_path / "nodehome"))
        yield f
    finally:
        f.close()


def repo(tmp_path: Path) -> tuple[Path, Path]:
    return make_repo(tmp_path / "repo", {"README.md": "sample\n", "flota.yaml": FLOTA_YAML})


def run_args(cli: str, server: FakeOpenAI | str, work: Path, *extra: str, model: str = MODEL) -> list[str]:
    base = server if isinstance(server, str) else server.base_url
    return ["run", "--agent", cli, "--model", model, "--api-base", base, "--repo", str(work), *extra]


@pytest.mark.parametrize("cli", ["architect", "aider"])
def test_a_real_cli_edits_and_its_change_is_committed_alone(fleet: Fleet, tmp_path: Path, cli: str) -> None:
    require(cli)
    work, remote = repo(tmp_path)
    assert cli in fleet.nodes()["n1"]["info"]["facts"]["agent_clis"]
    extra = ("--max-steps", "5") if cli == "architect" else ()
    with FakeOpenAI(edit_script(cli), default=text("done")) as server:
        result = fleet.flota("--json", *run_args(cli, server, work, *extra), "create hello.txt", "--follow")
        assert "Traceback" not in result.stderr, result.stderr
        run = json.loads(result.stdout)
        requests = server.requests
    job = run["jobs"][0]
    res = job["result"]
    assert (result.returncode, job["status"]) == (0, "success"), (job, fleet.flota("logs", job["id"]).stdout)
    assert requests and all(r["model"] == "fake" for r in requests)  # --api-base and --model reached it
    # The change, and only the change: no .architect/sessions, no .aider* history, no .gitignore edit.
    assert res["files_modified"] == ["hello.txt"], res
    assert git("--git-dir", str(remote), "show", f"refs/heads/{res['branch']}:hello.txt") == "hello\n"
    tree = git("--git-dir", str(remote), "ls-tree", "-r", "--name-only", f"refs/heads/{res['branch']}")
    assert tree.split() == ["README.md", "flota.yaml", "hello.txt"]
    if cli == "architect":  # --json: an indented object at the end of its stdout
        assert "--max-steps 5" in job["command"] and "--confirm-mode yolo" in job["command"]
        assert (res["steps"], res["tokens_in"], res["tokens_out"]) == (1, "20", "10"), res
        assert res["cost_usd"] > 0
    else:
        assert "--edit-format whole" in job["command"]  # flota.yaml's flags


def submit_hanging(fleet: Fleet, cli: str, server: FakeOpenAI, work: Path, *extra: str) -> dict[str, Any]:
    """A job whose CLI is waiting on its first model request (the server never answers)."""
    submitted = fleet.json(*run_args(cli, server, work, *extra), "create hello.txt")
    job: dict[str, Any] = submitted["jobs"][0]
    wait_until(lambda: server.requests, timeout=120, what=f"{cli}'s first model request")
    assert leftovers(job["id"]), "the CLI runs with the job's FLOTA_JOB_ID"
    return job


@pytest.mark.parametrize("cli", ["architect", "aider"])
def test_a_timeout_stops_the_real_cli_and_its_children(fleet: Fleet, tmp_path: Path, cli: str) -> None:
    require(cli)
    work, _ = repo(tmp_path)
    with FakeOpenAI([], default=text("late", delay_s=600)) as server:
        job = submit_hanging(fleet, cli, server, work, "--timeout", "60")
        status = wait_until(
            lambda: (
                (s := fleet.json("status", job["id"]))["status"] in ("timeout", "failed", "success") and s
            ),
            timeout=120,
            what="the job's end",
        )
        assert status["status"] == "timeout", status
        wait_until(lambda: not leftovers(job["id"]), timeout=15, what="no process of the job left")


@pytest.mark.parametrize("cli", ["architect", "aider"])
def test_a_cancel_stops_the_real_cli_and_its_children(fleet: Fleet, tmp_path: Path, cli: str) -> None:
    require(cli)
    work, _ = repo(tmp_path)
    with FakeOpenAI([], default=text("late", delay_s=600)) as server:
        job = submit_hanging(fleet, cli, server, work)
        fleet.flota("cancel", job["run_id"], check=True)
        wait_until(
            lambda: fleet.json("status", job["id"])["status"] == "cancelled", timeout=60, what="cancelled"
        )
        wait_until(lambda: not leftovers(job["id"]), timeout=15, what="no process of the job left")


@pytest.mark.parametrize("cli", ["architect", "aider"])
def test_a_real_cli_against_the_real_smollm2_ends_on_its_own(fleet: Fleet, tmp_path: Path, cli: str) -> None:
    """A real model says what it says: the job ends (no prompt waits for an answer, no
    timeout), the CLI's report is read, and its own files are not the job's work."""
    require(cli)
    work, _ = repo(tmp_path)
    extra = ("--max-steps", "2") if cli == "architect" else ()
    with smollm2_server(log_path=tmp_path / "llama.log") as (api_base, model):
        result = fleet.flota(
            "--json",
            *run_args(cli, api_base, work, "--timeout", "300", *extra, model=f"openai/{model}"),
            "Add a line saying hello to README.md",
            "--follow",
            timeout=400,
        )
    assert "Traceback" not in result.stderr, result.stderr
    job = json.loads(result.stdout)["jobs"][0]
    res = job["result"]
    logs = fleet.flota("logs", job["id"]).stdout
    assert job["status"] in ("success", "failed", "partial"), (job["status"], logs)
    assert not [f for f in res["files_modified"] if f.startswith((".architect", ".aider"))], res
    if cli == "architect":  # its JSON report, among LiteLLM's debug lines on stdout
        assert int(res["tokens_in"]) > 0 and int(res["tokens_out"]) > 0, (res, logs)
    print(f"\n[{cli} + smollm2] {job['status']}, {res['steps']} steps, files {res['files_modified']}")
