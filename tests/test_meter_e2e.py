"""Budgets that bind every agent (node_agent.meter) on a local fleet: the built-in llm
agent and a shell job acting as an agent CLI (Python's urllib to $OPENAI_BASE_URL) each
stopped at the budget by the node's metering proxy, with the model server's request count
asserted; the provider key in neither the job's environment nor its files; a proxy
killed mid-job failing the job, with no call reaching the provider unmetered; and a
daemon restart that keeps its jobs keeping their proxies too."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.fake_openai import FakeOpenAI, call, text
from tests.fleet import Fleet, git, make_repo, wait_until

pytestmark = pytest.mark.timeout(180)

KEY = "sk-proj-real-key-" + "7" * 24
# gpt-4o-mini: $0.15 in, $0.60 out per million tokens. A reply of (10, 4000) tokens costs
# $0.0024015: four of them fit this budget, and a fifth cannot (not even a few tokens).
FOUR_CALLS = 0.009611

# A small agent of its own: it calls the OpenAI-compatible server it is pointed at until
# it is refused, and says what it saw, as an external agent CLI would.
AGENT = """
import json, os, sys, urllib.error, urllib.request
base = sys.argv[1] if len(sys.argv) > 1 else os.environ["OPENAI_BASE_URL"]  # as a template fills it in
key = os.environ["OPENAI_API_KEY"]
open("env.txt", "w").write(json.dumps(dict(os.environ)))
gate = os.environ.get("GATE")
for n in range(1, 50):
    if gate and n == 2:
        open(gate + ".waiting", "w").close()
        while not os.path.exists(gate):
            pass
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "go"}]})
    req = urllib.request.Request(base + "/chat/completions", body.encode(),
                                 {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=30).read()
    except urllib.error.HTTPError as exc:
        print("refused:", exc.code, json.loads(exc.read())["error"]["message"])
        sys.exit(1)
    except OSError as exc:
        print("cannot reach the model server:", exc)
        sys.exit(1)
    print("call", n, "ok", flush=True)
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        yield f
    finally:
        f.close()


def run(fleet: Fleet, *args: str) -> dict[str, Any]:
    result = fleet.flota("--json", "run", *args, "--follow")
    assert "Traceback" not in result.stderr, result.stderr
    job: dict[str, Any] = json.loads(result.stdout)["jobs"][0]
    return job


def start(fleet: Fleet, *node_args: str) -> None:
    fleet.start_coordinator()
    fleet.start_node("a", *node_args)
    set_key = fleet.flota("secret", "set", "OPENAI_API_KEY", input_text=KEY + "\n")
    assert set_key.returncode == 0, set_key.stderr


def agent_command(tmp_path: Path) -> str:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    return f"{sys.executable} {script}"


def test_the_llm_agent_is_stopped_at_its_budget_by_the_proxy(fleet: Fleet, tmp_path: Path) -> None:
    work, remote = make_repo(tmp_path / "repo")
    start(fleet)
    step = call("write_file", path="notes.txt", content="more\n", usage=(10, 4000))
    with FakeOpenAI(default=step) as server:
        job = run(fleet, "--agent", "llm", "--model", "openai/gpt-4o-mini", "--api-base", server.base_url,
                  "--secret", "OPENAI_API_KEY", "--budget-per-worker", str(FOUR_CALLS), "--repo", str(work),
                  "--max-steps", "20", "write notes")  # fmt: skip
        requests, keys = server.requests, server.keys
    r = job["result"]
    assert len(requests) == 4  # the fifth call was refused by the proxy, never sent
    assert set(keys) == {f"Bearer {KEY}"}  # the proxy's key, not the job's token
    assert (job["status"], r["reason"]) == ("partial", "budget"), r
    assert r["error"].startswith("flota: budget $0.009611 reached: $0.009606 spent"), r["error"]
    m = r["metered"]
    assert (m["calls"], m["refused"], m["tokens_in"], m["tokens_out"], m["priced"]) == (
        4,
        1,
        "40",
        "16000",
        True,
    )
    assert m["cost_usd"] == pytest.approx(4 * (10 * 0.15e-6 + 4000 * 0.6e-6)) and m["cost_usd"] <= FOUR_CALLS
    # The run's figures are the metered ones.
    assert (r["tokens_in"], r["tokens_out"], r["cost_usd"]) == ("40", "16000", m["cost_usd"])
    # The llm agent was told a lower output limit than its own 4096 once the budget ran low.
    assert requests[0]["max_tokens"] == 4096
    assert git("--git-dir", str(remote), "show", f"{r['branch']}:notes.txt") == "more\n"
    table = fleet.flota("results", job["run_id"], env={"COLUMNS": "300"}).stdout
    assert "$0.0096 metered" in table
    shown = fleet.flota("status", job["id"], check=True).stdout
    assert (
        "metered by the node: 4 calls, 1 refused, 40 tokens in, 16000 out, $0.009606 of a $0.009611 budget"
        in shown
    )


def test_an_external_agent_is_stopped_at_its_budget_and_never_sees_the_key(
    fleet: Fleet, tmp_path: Path
) -> None:
    work, remote = make_repo(tmp_path / "repo")
    start(fleet)
    gate = tmp_path / "gate"
    with FakeOpenAI(default=text("ok", usage=(10, 4000))) as server:
        submitted = fleet.flota(
            "--json", "run", "--api-base", server.base_url, "--secret", "OPENAI_API_KEY",
            "--env", f"GATE={gate}",
            "--budget-per-worker", str(FOUR_CALLS), "--repo", str(work),
            f"{agent_command(tmp_path)} {server.base_url}",  # the real base named: the node routes it
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        run_id = json.loads(submitted.stdout)["id"]
        wait_until(lambda: (tmp_path / "gate.waiting").exists(), timeout=60, what="the job's first call")
        # The job's process, as the kernel has its environment: no key, the proxy's token.
        job_proc = next(
            p
            for p in psutil.process_iter(["cmdline"])
            if str(tmp_path / "agent.py") in (p.info["cmdline"] or [])
        )
        environ = Path(f"/proc/{job_proc.pid}/environ").read_bytes()
        assert KEY.encode() not in environ and b"OPENAI_BASE_URL=http://127.0.0.1:" in environ
        gate.touch()
        job = wait_job(fleet, run_id)
        requests = server.requests
    r = job["result"]
    assert len(requests) == 4
    assert (job["status"], r["reason"]) == ("partial", "budget"), r
    assert r["metered"]["refused"] == 1 and r["metered"]["calls"] == 4
    table = fleet.flota("results", run_id, env={"COLUMNS": "300"}).stdout
    assert "$0.0096 metered" in table  # a shell job's cost too
    log = fleet.flota("logs", job["id"], check=True).stdout
    assert "refused: 402 flota: budget $0.009611 reached" in log
    # Its files (env.txt, committed on its branch) hold the token, never the key.
    env = json.loads(git("--git-dir", str(remote), "show", f"{r['branch']}:env.txt"))
    assert env["OPENAI_API_KEY"].startswith("flota-meter-") and KEY not in json.dumps(env)
    node_files = [p for p in (fleet.home / "nodes" / "a").rglob("*") if p.is_file()]
    assert not [p for p in node_files if KEY.encode() in p.read_bytes()]


def wait_job(fleet: Fleet, run_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = fleet.json("status", run_id)["jobs"][0]
        return job if job["status"] not in ("queued", "dispatching", "running") else None

    job: dict[str, Any] = wait_until(ended, timeout=120, what="the job's end")
    return job


def test_a_proxy_killed_mid_job_fails_the_job_and_lets_no_call_through(fleet: Fleet, tmp_path: Path) -> None:
    start(fleet)
    gate = tmp_path / "gate"
    with FakeOpenAI(default=text("ok", usage=(10, 10))) as server:
        submitted = fleet.flota(
            "--json", "run", "--api-base", server.base_url, "--secret", "OPENAI_API_KEY",
            "--env", f"GATE={gate}",
            "--budget-per-worker", "1", agent_command(tmp_path),
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        run_id = json.loads(submitted.stdout)["id"]
        wait_until(lambda: (tmp_path / "gate.waiting").exists(), timeout=60, what="the job's first call")
        (state,) = (fleet.home / "nodes" / "a" / "jobs").glob("*/meter.json")
        os.kill(json.loads(state.read_text())["pid"], signal.SIGKILL)
        gate.touch()
        job = wait_job(fleet, run_id)
        requests = server.requests
    assert len(requests) == 1  # the one call made before the proxy went; none after
    r = job["result"]
    assert job["status"] == "failed", r
    assert r["error"].startswith("the job's metering proxy stopped; the job was failed"), r["error"]


def test_a_daemon_restart_keeps_the_jobs_proxy_and_its_count(fleet: Fleet, tmp_path: Path) -> None:
    start(fleet, "--lost-after", "60")
    gate = tmp_path / "gate"
    with FakeOpenAI(default=text("ok", usage=(10, 4000))) as server:
        submitted = fleet.flota(
            "--json", "run", "--api-base", server.base_url, "--secret", "OPENAI_API_KEY",
            "--env", f"GATE={gate}", "--budget-per-worker", str(FOUR_CALLS), agent_command(tmp_path),
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        run_id = json.loads(submitted.stdout)["id"]
        wait_until(lambda: (tmp_path / "gate.waiting").exists(), timeout=60, what="the job's first call")
        assert fleet.stop("a", signal.SIGUSR1) == 0  # restart, keep jobs
        fleet.start_node("a", "--lost-after", "60", join=False)
        gate.touch()  # the job goes on, through the proxy the first daemon started
        job = wait_job(fleet, run_id)
        requests = server.requests
    r = job["result"]
    assert len(requests) == 4
    assert (job["status"], r["reason"]) == ("partial", "budget"), r
    assert (r["metered"]["calls"], r["metered"]["refused"]) == (
        4,
        1,
    )  # the whole count, read by the new daemon
    assert [a["status"] for a in job["attempts"]] == ["partial"]
