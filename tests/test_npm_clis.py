"""The real npm agent CLIs (Claude Code, Codex, Gemini CLI) through `flota run --agent NAME`
on a local fleet, each against a scripted loopback server in its provider's API (Anthropic
Messages, OpenAI Responses, Gemini): the file the model asks for is committed on the job's
branch, the counts are read where the CLI reports them, nothing prompts (no terminal, stdin
closed), and a timeout or a cancel stops the CLI and the command it was running."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.agents import TEMPLATES
from tests.agent_clis import NPM_KITS as KITS
from tests.agent_clis import leftovers, node_env, require
from tests.fake_openai import FakeOpenAI, Reply
from tests.fleet import Fleet, git, make_repo, wait_until

pytestmark = pytest.mark.timeout(600)


CLIS = sorted(KITS)
# Where each reports: (steps, tokens_in, tokens_out, cost reported) for one command + an answer.
REPORTS = {"claude": (2, "20", "10", True), "codex": (0, "20", "10", False), "gemini": (2, "20", "10", False)}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        f.start_coordinator()
        f.start_node("n1", env=node_env(tmp_path / "nodehome"))
        yield f
    finally:
        f.close()


def serve(cli: str, script: list[Reply], late: bool = False) -> FakeOpenAI:
    """The CLI's server: the script for its model; other requests (a CLI's side calls)
    answered at once, or never (``late``) once the script is spent."""
    kit = KITS[cli]
    default = kit.text("ok")
    return kit.server(
        by_model={kit.model: script}, default=dataclasses.replace(default, delay_s=600) if late else default
    )


def run_args(cli: str, server: FakeOpenAI, work: Path, *extra: str) -> list[str]:
    model = KITS[cli].model
    return [
        "run",
        "--agent",
        cli,
        "--model",
        model,
        "--api-base",
        server.base_url,
        "--repo",
        str(work),
        *extra,
    ]


@pytest.mark.parametrize("cli", CLIS)
def test_a_real_cli_writes_the_file_and_it_is_committed(fleet: Fleet, tmp_path: Path, cli: str) -> None:
    require(cli)
    work, remote = make_repo(tmp_path / "repo", {"README.md": "sample\n"})
    assert cli in fleet.nodes()["n1"]["info"]["facts"]["agent_clis"]
    kit = KITS[cli]
    with serve(cli, [kit.shell("printf 'hello\\n' > hello.txt"), kit.text("done")]) as server:
        result = fleet.flota(
            "--json", *run_args(cli, server, work), "create hello.txt", "--follow", timeout=300
        )
        assert "Traceback" not in result.stderr, result.stderr
        run = json.loads(result.stdout)
        requests, paths = server.requests, server.paths
    job = run["jobs"][0]
    res = job["result"]
    logs = fleet.flota("logs", job["id"]).stdout
    assert (result.returncode, job["status"]) == (0, "success"), (job, logs)
    # --api-base and --model reached the CLI: its requests came here, for this model.
    assert len([p for p in paths if kit.model in p or "/v1/" in p]) >= 2, paths
    assert any(kit.model in json.dumps(r) or kit.model in p for r, p in zip(requests, paths, strict=True))
    assert "create hello.txt" in json.dumps(requests[0])
    assert res["files_modified"] == ["hello.txt"], res
    assert git("--git-dir", str(remote), "show", f"refs/heads/{res['branch']}:hello.txt") == "hello\n"
    steps, tokens_in, tokens_out, costed = REPORTS[cli]
    assert (res["steps"], res["tokens_in"], res["tokens_out"]) == (steps, tokens_in, tokens_out), res
    assert (res["cost_usd"] > 0) == costed, res


def child_marker() -> str:
    """A command line no other process has: `sleep N` with an N of this test's own."""
    return f"sleep {random.randint(100_000, 999_999)}"


def running(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read().replace(b"\0", b" ").strip() == marker.encode():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def submit_busy(
    fleet: Fleet, cli: str, server: FakeOpenAI, work: Path, marker: str, *extra: str
) -> dict[str, Any]:
    """A job whose CLI is running the scripted model's long command."""
    job: dict[str, Any] = fleet.json(*run_args(cli, server, work, *extra), "wait a while")["jobs"][0]
    wait_until(lambda: running(marker), timeout=120, what=f"{cli} running {marker!r}")
    assert leftovers(job["id"]), "the CLI runs with the job's FLOTA_JOB_ID"
    return job


def assert_all_gone(job: dict[str, Any], marker: str) -> None:
    wait_until(lambda: not leftovers(job["id"]), timeout=15, what="no process of the job left")
    wait_until(lambda: not running(marker), timeout=15, what=f"no {marker!r} left")


@pytest.mark.parametrize("cli", CLIS)
def test_a_timeout_stops_the_real_cli_and_its_children(fleet: Fleet, tmp_path: Path, cli: str) -> None:
    require(cli)
    work, _ = make_repo(tmp_path / "repo", {"README.md": "sample\n"})
    marker = child_marker()
    with serve(cli, [KITS[cli].shell(marker)], late=True) as server:
        job = submit_busy(fleet, cli, server, work, marker, "--timeout", "45")
        status = wait_until(
            lambda: (
                (s := fleet.json("status", job["id"]))["status"] in ("timeout", "failed", "success") and s
            ),
            timeout=120,
            what="the job's end",
        )
        assert status["status"] == "timeout", status
        assert_all_gone(job, marker)


@pytest.mark.parametrize("cli", CLIS)
def test_a_cancel_stops_the_real_cli_and_its_children(fleet: Fleet, tmp_path: Path, cli: str) -> None:
    require(cli)
    work, _ = make_repo(tmp_path / "repo", {"README.md": "sample\n"})
    marker = child_marker()
    with serve(cli, [KITS[cli].shell(marker)], late=True) as server:
        job = submit_busy(fleet, cli, server, work, marker)
        fleet.flota("cancel", job["run_id"], check=True)
        wait_until(
            lambda: fleet.json("status", job["id"])["status"] == "cancelled", timeout=60, what="cancelled"
        )
        assert_all_gone(job, marker)


def outside_loopback(trace: Path) -> list[str]:
    """The connect/sendto calls of a strace log that name an address other than loopback."""
    calls = [line for line in trace.read_text().splitlines() if "sin_addr" in line or "sin6_addr" in line]
    return [c for c in calls if '"127.0.0.1"' not in c and '"::1"' not in c]


@pytest.mark.parametrize("cli", CLIS)
def test_the_template_sends_nothing_beyond_loopback(tmp_path: Path, cli: str) -> None:
    """The template's own command line and variables, traced: no telemetry, update check
    or marketplace fetch (not even a DNS query) leaves the machine."""
    require(cli)
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is missing; install it with: apt-get install strace (scripts/test does)")
    work, _ = make_repo(tmp_path / "repo", {"README.md": "sample\n"})
    env = {**os.environ, **node_env(tmp_path / "home")}
    kit, template = KITS[cli], TEMPLATES[cli]
    with serve(cli, [kit.shell("printf 'hello\\n' > hello.txt"), kit.text("done")]) as server:
        env.update(template.environment(kit.model, server.base_url))
        line = template.command("create hello.txt", kit.model, server.base_url)
        trace = tmp_path / "strace.txt"
        argv = [strace, "-f", "-qq", "-e", "trace=connect,sendto", "-o", str(trace), "bash", "-c", line]
        proc = subprocess.run(
            argv, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert server.requests, "the CLI asked the loopback server"
    assert (work / "hello.txt").read_text() == "hello\n"
    assert outside_loopback(trace) == []
