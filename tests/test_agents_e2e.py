"""AI workers end to end on a local fleet: a competition of three models over three
nodes against an OpenAI-compatible server on loopback, `flota compare`, a check
command, an external agent CLI template (a small executable standing in for `claude`),
and flota.yaml defaults."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_openai import FakeOpenAI, call
from tests.fleet import Fleet, git, make_repo, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        yield f
    finally:
        f.close()


def follow(fleet: Fleet, *args: str, cwd: Path | None = None) -> tuple[int, dict[str, Any]]:
    result = fleet.flota("--json", "run", *args, "--follow", cwd=cwd)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout)


MODELS = ["openai/gpt-4o-mini", "openai/gpt-4o", "openai/gpt-3.5-turbo"]


def test_three_models_on_three_nodes_ranked_by_compare(fleet: Fleet, tmp_path: Path) -> None:
    work, remote = make_repo(tmp_path / "repo")
    fleet.start_coordinator()
    for name in ("a", "b", "c"):
        fleet.start_node(name)
    scripts = {
        # m1: does the task, with the cheapest model (prices from litellm's map)
        "gpt-4o-mini": [
            call("write_file", path="hello.txt", content="hello\n"),
            call("finish", summary="wrote it"),
        ],
        # m2: does it with more churn and more steps
        "gpt-4o": [
            call("write_file", path="hello.txt", content="hello\nhello again\nand more\n"),
            call("write_file", path="notes.md", content="# notes\n"),
            call("finish", summary="wrote more", usage=(40, 20)),
        ],
        # m3: forgets the file: the check fails
        "gpt-3.5-turbo": [call("finish", summary="nothing to do")],
    }
    with FakeOpenAI(by_model=scripts) as server:
        code, run = follow(
            fleet,
            "--agent",
            "llm",
            "--models",
            ",".join(MODELS),
            "--api-base",
            server.base_url,
            "--repo",
            str(work),
            "--check",
            "test -f hello.txt",
            "--max-steps",
            "5",
            "write hello.txt",
        )
    assert code == 0, run  # every job succeeded (the check is recorded, not a failure)
    jobs = {j["model"]: j for j in run["jobs"]}
    assert set(jobs) == set(MODELS)
    assert len({j["node_name"] for j in jobs.values()}) == 3, "one model per machine"
    m1, m2, m3 = (jobs[m]["result"] for m in MODELS)
    assert (m1["status"], m1["check"], m1["steps"], m1["tokens_in"], m1["tokens_out"]) == (
        "success",
        "passed",
        2,
        "20",
        "10",
    )
    assert (m2["check"], m2["steps"], m2["files_modified"]) == ("passed", 3, ["hello.txt", "notes.md"])
    assert (m3["check"], m3["steps"], m3["files_modified"]) == ("failed", 1, [])
    assert (m3["status"], m3["branch"]) == ("success", "")  # it answered in text: no changes, no branch
    assert git("--git-dir", str(remote), "show", f"refs/heads/{m1['branch']}:hello.txt") == "hello\n"
    # Every model call went to the loopback server with the job's prompt.
    assert {r["model"] for r in server.requests} == {m.removeprefix("openai/") for m in MODELS}
    assert 0 < m1["cost_usd"] < m2["cost_usd"]
    assert all("write hello.txt" in json.dumps(r["messages"]) for r in server.requests)

    ranked = fleet.json("compare", run["id"])
    assert [r["model"] for r in ranked] == MODELS
    assert [r["no_changes"] for r in ranked] == [False, False, True]
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    table = fleet.flota("compare", run["id"], check=True).stdout
    assert table.index("gpt-4o-mini") < table.index("openai/gpt-4o ") < table.index("gpt-3.5-turbo")
    log = fleet.flota("logs", jobs[MODELS[0]]["id"], check=True).stdout
    assert "step 1: write_file hello.txt" in log and "[flota] check: test -f hello.txt" in log


FAKE_CLAUDE = """#!/usr/bin/env python3
# Stands in for Claude Code: reads the prompt from -p, writes a file, prints its JSON.
import json, sys
args = sys.argv[1:]
prompt = args[args.index("-p") + 1]
model = args[args.index("--model") + 1] if "--model" in args else "default"
with open("answer.txt", "w") as f:
    f.write(f"{model}: {prompt}\\n")
print("working...")
print(json.dumps({"type": "result", "result": "done", "total_cost_usd": 0.0123, "num_turns": 4,
                  "usage": {"input_tokens": 1500, "output_tokens": 320}}))
"""


def test_external_agent_template_runs_only_where_the_cli_is(fleet: Fleet, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "claude"
    exe.write_text(FAKE_CLAUDE)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    work, remote = make_repo(tmp_path / "repo")
    fleet.start_coordinator()
    fleet.start_node("plain")
    fleet.start_node("agentic", env={"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"})
    assert "claude" in fleet.nodes()["agentic"]["info"]["facts"]["agent_clis"]
    assert "claude" not in fleet.nodes()["plain"]["info"]["facts"]["agent_clis"]

    code, run = follow(
        fleet, "--agent", "claude", "--model", "sonnet", "--repo", str(work), "say 'hi' & $(x)"
    )
    assert code == 0, run
    job = run["jobs"][0]
    assert job["node_name"] == "agentic" and job["requires"] == "claude"
    result = job["result"]
    assert (result["cost_usd"], result["steps"], result["tokens_in"], result["tokens_out"]) == (
        0.0123,
        4,
        "1500",
        "320",
    )
    # The prompt reached the CLI as one argument, quotes and $(...) untouched.
    assert git("--git-dir", str(remote), "show", f"refs/heads/{result['branch']}:answer.txt") == (
        "sonnet: say 'hi' & $(x)\n"
    )

    fleet.stop("agentic")
    queued = fleet.json("run", "--agent", "claude", "anything")["jobs"][0]["id"]
    wait_until(
        lambda: fleet.json("status", queued)["wait_reason"] == "no node has agent CLI 'claude'", what="reason"
    )


def test_repo_config_gives_defaults_and_templates(fleet: Fleet, tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo")
    (work / "echoer.sh").write_text('echo "$1 $2" > out.txt\necho \'{"cost": 0.5, "turns": 2}\'\n')
    (work / "flota.yaml").write_text(
        "run:\n"
        "  agent: echoer\n"
        "  models: [x1, x2]\n"
        "  check: test -f out.txt\n"
        "agents:\n"
        "  echoer:\n"
        "    argv: [sh, echoer.sh, '{model}', '{prompt}']\n"
        "    requires: sh\n"
        "    report: {cost_usd: cost, steps: turns}\n"
    )
    git("add", "-A", cwd=work)
    git("commit", "-qm", "config", cwd=work)
    fleet.start_coordinator()
    fleet.start_node("n", "--slots", "2", "--agent-cli", "sh")
    assert "sh" in fleet.nodes()["n"]["info"]["facts"]["agent_clis"]
    bad = fleet.flota("run", "--repo", str(work), "--agent", "nope", "t")
    assert bad.returncode == 2 and "unknown agent 'nope'" in bad.stderr
    # The config says: agent echoer, two models, a check. Flags would override.
    code, run = follow(fleet, "--repo", str(work), "task one")
    assert [j["model"] for j in run["jobs"]] == ["x1", "x2"], run
    assert code == 0, run
    for job in run["jobs"]:
        assert job["agent"] == "echoer" and job["check"] == "test -f out.txt"
        result = job["result"]
        assert (result["cost_usd"], result["steps"], result["check"]) == (0.5, 2, "passed")


def test_a_local_model_job_goes_to_the_node_that_serves_it(fleet: Fleet, tmp_path: Path) -> None:
    """A node reports the models its local servers serve (here an OpenAI-compatible one
    given with --model-server); an llm job for such a model, with no --api-base, runs
    there and reaches the server through the node."""
    script = [
        call("write_file", path="local.txt", content="from a local model\n"),
        call("finish", summary="ok"),
    ]
    with FakeOpenAI(script) as server:
        fleet.start_coordinator()
        fleet.start_node("cloudy")
        fleet.start_node("gpu-box", "--model-server", server.base_url)
        models = wait_until(
            lambda: fleet.nodes()["gpu-box"]["info"]["facts"].get("local_models"),
            what="local models reported",
        )
        assert models == [{"model": "openai/fake", "api_base": server.base_url, "slots": 1}]
        code, run = follow(fleet, "--agent", "llm", "--model", "openai/fake", "write local.txt")
        assert code == 0, run
        job = run["jobs"][0]
        assert (job["node_name"], job["requires"]) == ("gpu-box", "model:openai/fake")
        assert job["result"]["steps"] == 2
        assert len(server.requests) == 2
    # A model no node serves and no --api-base: placed anywhere (a cloud model).
    plain = fleet.json("run", "--agent", "llm", "--model", "openai/gpt-4o", "hi")["jobs"][0]
    assert plain["requires"] == ""
    fleet.flota("cancel", plain["id"])
    # lm_studio/ and ollama/ models always need a node that serves them.
    local = fleet.json("run", "--agent", "llm", "--model", "ollama/qwen2.5-coder", "hi")["jobs"][0]["id"]
    wait_until(
        lambda: fleet.json("status", local)["wait_reason"] == "no node serves model ollama/qwen2.5-coder",
        what="wait reason",
    )


def test_an_agents_own_limit_is_final_and_a_dead_model_server_is_one_clear_line(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Issue 14, defects 16 and 10 on a 2-node fleet with retries left: a job that uses up
    its --max-steps ends partial once, on one node (no second run spending the steps
    again); a model server that refuses connections is no step limit but a failure that
    says so, and a retry elsewhere cannot help: the same URL for every node."""
    work, _ = make_repo(tmp_path / "repo")
    fleet.start_coordinator()
    fleet.start_node("a")
    fleet.start_node("b")
    script = [call("write_file", path="wip.txt", content="halfway\n")]  # then it only looks around
    with FakeOpenAI(script, default=call("list_files")) as server:
        code, run = follow(
            fleet,
            "--agent", "llm", "--model", "openai/fake", "--api-base", server.base_url,
            "--repo", str(work), "--max-steps", "2", "--retries", "1", "look around",
        )  # fmt: skip
        calls = len(server.requests)
    assert code == 1, run
    (job,) = run["jobs"]
    assert (job["status"], len(job["attempts"]), calls) == ("partial", 1, 2), job
    r = job["result"]
    assert (r["reason"], r["error"], r["steps"]) == ("max_steps", "max steps reached (2)", 2)
    assert r["branch"] and r["files_modified"] == ["wip.txt"]  # its work so far is pushed, as for any partial
    assert "partial (max steps)" in fleet.flota("results", run["id"]).stdout

    dead = "http://127.0.0.1:9/v1"  # the discard port: refused on loopback
    code, run = follow(
        fleet,
        "--agent", "llm", "--model", "openai/fake", "--api-base", dead,
        "--max-steps", "2", "--retries", "1", "say hi",
    )  # fmt: skip
    assert code == 1, run
    (job,) = run["jobs"]
    line = f"cannot reach the model server at {dead}: connection refused"
    assert (job["status"], len(job["attempts"])) == ("failed", 1), job
    r = job["result"]
    assert (r["reason"], r["error"], r["steps"], r["tokens_in"]) == ("model_unreachable", line, 0, "0")
    assert "failed (model unreachable)" in fleet.flota("results", run["id"]).stdout


def test_a_nodes_own_model_server_that_is_down_sends_the_retry_elsewhere(fleet: Fleet) -> None:
    """No --api-base, a model the nodes serve themselves: when node a's server is gone, a
    stops offering the model before it reports the failure, and the retry runs on b."""
    down = FakeOpenAI().start()
    gone = down.base_url
    script = [call("write_file", path="b.txt", content="b\n"), call("finish", summary="ok")]
    with FakeOpenAI(script) as up:
        fleet.start_coordinator()
        fleet.start_node("a", "--model-server", gone)
        wait_until(lambda: fleet.nodes()["a"]["info"]["facts"].get("local_models"), what="a's model")
        down.close()  # a offers its model until it looks again (every 10 s, or when told)
        job_id = fleet.json("run", "--agent", "llm", "--model", "openai/fake", "--retries", "1", "hi")[
            "jobs"
        ][0]["id"]
        wait_until(lambda: fleet.json("status", job_id)["attempts"], what="the first attempt")
        fleet.start_node("b", "--model-server", up.base_url)
        job = wait_until(
            lambda: (
                (j := fleet.json("status", job_id))["status"] not in ("queued", "dispatching", "running")
                and j
            ),
            timeout=90,
            what="the job's end",
        )
        assert len(up.requests) == 2
    first, second = job["attempts"]
    assert (first["node_name"], first["status"]) == ("a", "failed")
    assert first["error"] == f"cannot reach the model server at {gone}: connection refused"
    assert (second["node_name"], second["status"], job["status"]) == ("b", "success", "success"), job
