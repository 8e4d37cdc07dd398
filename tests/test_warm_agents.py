"""The llm agent host on a real node: llm jobs forked warm from one process that has
litellm imported (the daemon never imports it), jobs that outlive a daemon killed with
SIGKILL, and the host leaving after its idle period."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.fake_openai import FakeOpenAI, Reply, call
from tests.fleet import Fleet, wait_until

pytestmark = pytest.mark.timeout(240)

HOST = "node_agent.agents.llm.host"
# The agent's run_command tool, asked to print its agent process's parent (the host) and
# what that parent runs.
WHO = "p=$(cut -d' ' -f4 /proc/$PPID/stat); echo \"parent=$p $(tr '\\0' ' ' < /proc/$p/cmdline)\""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        yield f
    finally:
        f.close()


def one_job() -> list[Reply]:
    return [call("run_command", command=WHO), call("finish", summary="ok")]


def hosts_of(daemon_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(daemon_pid).children() if HOST in " ".join(p.cmdline())]


def maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def parents_said(server: FakeOpenAI) -> list[int]:
    """The agent processes' parents, as each run_command's output came back to the model;
    each must be an agent host."""
    said = []
    for request in server.requests:
        for message in request["messages"]:
            found = (
                re.search(r"parent=(\d+) (.*)", str(message.get("content")))
                if message.get("role") == "tool"
                else None
            )
            if found:
                assert HOST in found[2], found[0]
                said.append(int(found[1]))
    return said


def run_llm(fleet: Fleet, *args: str) -> dict[str, Any]:
    result = fleet.flota("--json", "run", "--agent", "llm", "--model", "openai/fake", *args, "--follow")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["jobs"][0]  # type: ignore[no-any-return]


def test_llm_jobs_are_forked_from_one_warm_host(fleet: Fleet) -> None:
    with FakeOpenAI([*one_job(), *one_job()]) as server:
        fleet.start_coordinator()
        daemon = fleet.start_node("n", "--model-server", server.base_url)
        first = run_llm(fleet, "who is my parent?")
        second = run_llm(fleet, "and mine?")
        assert first["status"] == second["status"] == "success", (first, second)
        parents = parents_said(server)
        (host,) = hosts_of(daemon.pid)
        # Both agent processes were children of the same host, which the daemon started:
        # the second job imported nothing the first had not.
        assert parents == [host.pid, host.pid], parents
        assert "tiktoken" in maps(host.pid)  # litellm is in the host ...
        assert "tiktoken" not in maps(daemon.pid)  # ... never in the daemon


def test_a_job_from_the_host_outlives_a_daemon_killed_with_sigkill(fleet: Fleet) -> None:
    with FakeOpenAI(one_job()) as server:
        fleet.start_coordinator()
        daemon = fleet.start_node("n", "--lost-after", "60", "--model-server", server.base_url)
        server.hold()  # the agent waits on its model
        job_id = fleet.json("run", "--agent", "llm", "--model", "openai/fake", "hi")["jobs"][0]["id"]
        wait_until(lambda: len(server.requests) == 1, timeout=60, what="the model's first request")
        (host,) = hosts_of(daemon.pid)
        (agent,) = host.children()
        assert fleet.stop("n", signal.SIGKILL) == -signal.SIGKILL
        assert host.is_running() and agent.is_running()
        fleet.start_node("n", "--lost-after", "60", "--model-server", server.base_url, join=False)
        server.release()
        done = wait_until(
            lambda: (
                (j := fleet.json("status", job_id))["status"] not in ("running", "queued", "dispatching")
                and j
            ),
            timeout=90,
            what="the job's end",
        )
        assert done["status"] == "success", done
        assert [a["status"] for a in done["attempts"]] == ["success"]
        assert done["result"]["steps"] == 2
        assert len(server.requests) == 2  # the job ran once, never started again
        assert parents_said(server) == [host.pid]
        host.wait(30)  # its daemon gone and its last job ended, the old host leaves


def test_the_host_starts_ahead_and_leaves_when_idle(fleet: Fleet) -> None:
    with FakeOpenAI(one_job()) as server:
        fleet.start_coordinator()
        daemon = fleet.start_node(
            "n", "--warm-agents", "--agent-idle", "2", "--model-server", server.base_url
        )
        (host,) = wait_until(lambda: hosts_of(daemon.pid), timeout=30, what="the agent host, before any job")
        host.wait(60)  # no llm job for 2 s: it leaves
        assert daemon.poll() is None
        job = run_llm(fleet, "hi")  # the next llm job starts a new host
        assert job["status"] == "success", job
        (again,) = parents_said(server)
        assert again != host.pid


def test_no_host_with_agent_idle_zero(fleet: Fleet) -> None:
    with FakeOpenAI(one_job()) as server:
        fleet.start_coordinator()
        daemon = fleet.start_node("n", "--agent-idle", "0", "--model-server", server.base_url)
        job = run_llm(fleet, "hi")
        assert job["status"] == "success", job
        assert [m for r in server.requests for m in r["messages"] if "parent=" in str(m.get("content"))]
        with pytest.raises(AssertionError, match="keeper.py"):  # a fresh process, as before
            parents_said(server)
        assert hosts_of(daemon.pid) == []
