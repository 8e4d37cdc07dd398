"""The litellm adapter: imported only when the agent runs, prices from litellm's map, and a
missing API key caught before any call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_openai import FakeOpenAI, call
from tests.node_agent.llm.program import ROOT, agent_env, needs_litellm, run_agent

pytestmark = pytest.mark.timeout(60)


def test_importing_the_agent_stays_cheap() -> None:
    # Every module of the agent, the package and its entry point included: only a
    # LiteLLMModel, made when the agent runs, imports litellm (DESIGN rule 7).
    modules = ", ".join(
        f"node_agent.agents.llm.{m}"
        for m in ("contract", "errors", "files", "commands", "tools", "loop", "model", "__main__")
    )
    code = f"import sys, node_agent.agents.llm, {modules}; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


@needs_litellm
def test_a_local_model_costs_nothing(box: tuple[Path, Path]) -> None:
    wt, _ = box
    script = [call("list_files", usage=(5000, 5000)), call("finish", summary="ok", usage=(5000, 5000))]
    out = run_agent(wt, script, FLOTA_LLM_MODEL="openai/my-local-model", FLOTA_LLM_BUDGET_USD="0.000001")
    assert out.code == 0, out.stdout + out.stderr
    assert out.report["cost_usd"] == 0 and out.report["tokens_in"] == 10000 and len(out.requests) == 2


@needs_litellm
def test_a_missing_api_key_is_bad_input(box: tuple[Path, Path]) -> None:
    wt, _ = box
    report = wt.parent / "report.json"
    env = agent_env(wt, "", report, FLOTA_LLM_MODEL="anthropic/claude-sonnet-4-5")
    del env["FLOTA_LLM_API_BASE"]
    proc = subprocess.run(
        [sys.executable, "-m", "node_agent.agents.llm"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr
        == "flota llm agent: anthropic/claude-sonnet-4-5 needs ANTHROPIC_API_KEY in the environment\n"
    )
    assert json.loads(report.read_text())["status"] == "failed"


def _agent(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node_agent.agents.llm"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=40,
    )


@needs_litellm
def test_a_dead_server_fails_with_one_clear_line_and_takes_no_step(box: tuple[Path, Path]) -> None:
    # Port 9 (discard) refuses on loopback: the run is no "max steps reached", and costs nothing.
    wt, _ = box
    report = wt.parent / "report.json"
    proc = _agent(agent_env(wt, "http://127.0.0.1:9/v1", report, FLOTA_LLM_MAX_STEPS="2"))
    line = "cannot reach the model server at http://127.0.0.1:9/v1: connection refused"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == f"failed: {line}"
    r = json.loads(report.read_text())
    assert (r["status"], r["error"], r["reason"]) == ("failed", line, "model_unreachable")
    assert (r["steps"], r["tokens_in"], r["tokens_out"]) == (0, 0, 0)


@needs_litellm
def test_a_tls_failure_is_named(box: tuple[Path, Path]) -> None:
    # https to a plain-HTTP server: the handshake fails before any request.
    wt, _ = box
    report = wt.parent / "report.json"
    with FakeOpenAI([call("finish", summary="never")]) as server:
        base = server.base_url.replace("http://", "https://")
        proc = _agent(agent_env(wt, base, report, FLOTA_LLM_MAX_STEPS="2"))
        assert server.requests == []
    r = json.loads(report.read_text())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (r["status"], r["reason"]) == ("failed", "model_unreachable")
    assert (
        r["error"] == f"cannot reach the model server at {base}: TLS handshake failed (wrong version number)"
    )


@needs_litellm
def test_without_an_api_base_the_line_names_the_url_litellm_used(box: tuple[Path, Path]) -> None:
    # The provider's base from the environment (OPENAI_BASE_URL), on loopback: nothing leaves.
    wt, _ = box
    report = wt.parent / "report.json"
    env = agent_env(wt, "", report, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    del env["FLOTA_LLM_API_BASE"]
    proc = _agent(env)
    r = json.loads(report.read_text())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert r["error"] == "cannot reach the model server at http://127.0.0.1:9: connection refused"
