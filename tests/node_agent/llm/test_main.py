"""The agent's process: SIGTERM ends it "partial" with its command killed; bad input
exits 2 with one line and still leaves a report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_openai import FakeOpenAI, call
from tests.node_agent.llm.program import ROOT, agent_env, needs_litellm, run_agent, running, wait_until

pytestmark = pytest.mark.timeout(60)


@needs_litellm
def test_sigterm_ends_partial_and_kills_the_running_command(box: tuple[Path, Path]) -> None:
    wt, _ = box
    report = wt.parent / "report.json"
    with FakeOpenAI([call("run_command", command="echo $$ > cmd.pid; sleep 60")]) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node_agent.agents.llm"],
            env=agent_env(wt, server.base_url, report),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_until(
                lambda: (wt / "cmd.pid").exists() and (wt / "cmd.pid").read_text().strip() != "", 20
            )
            command = int((wt / "cmd.pid").read_text())
            proc.send_signal(signal.SIGTERM)
            stdout, _ = proc.communicate(timeout=10)
        finally:
            proc.kill()
    assert proc.returncode == 3
    assert json.loads(report.read_text())["error"] == "interrupted by SIGTERM"
    assert "interrupted by SIGTERM" in stdout
    assert wait_until(lambda: not running(command), 5)


@pytest.mark.parametrize(
    ("drop", "extra", "message"),
    [
        (
            ("FLOTA_WORKTREE", "FLOTA_LLM_PROMPT"),
            {},
            "flota llm agent: missing environment variables: FLOTA_WORKTREE, FLOTA_LLM_PROMPT",
        ),
        (
            (),
            {"FLOTA_LLM_MAX_STEPS": "many"},
            "flota llm agent: FLOTA_LLM_MAX_STEPS must be an integer, not 'many'",
        ),
        (
            (),
            {"FLOTA_LLM_BUDGET_USD": "-1"},
            "flota llm agent: FLOTA_LLM_BUDGET_USD must be a number >= 0, not '-1'",
        ),
        (
            (),
            {"FLOTA_WORKTREE": "/nonexistent/wt"},
            "flota llm agent: FLOTA_WORKTREE is not a directory: /nonexistent/wt",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    box: tuple[Path, Path], drop: tuple[str, ...], extra: dict[str, str], message: str
) -> None:
    wt, _ = box
    report = wt.parent / "report.json"
    env = agent_env(wt, "http://127.0.0.1:9/v1", report, **extra)
    for name in drop:
        del env[name]
    proc = subprocess.run(
        [sys.executable, "-m", "node_agent.agents.llm"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert proc.stderr == message + "\n" and proc.stdout == ""
    assert json.loads(report.read_text())["status"] == "failed"


@needs_litellm
def test_the_last_line_and_the_report_bytes(box: tuple[Path, Path]) -> None:
    wt, _ = box
    out = run_agent(wt, [call("finish", summary="all  done\nhere", usage=(7, 3))])
    assert out.code == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "success: all done here"
    report = (wt.parent / "report.json").read_bytes()
    assert report == json.dumps(out.report, indent=2).encode() + b"\n"  # the launcher's format, whole
    order = [
        "status",
        "error",
        "steps",
        "tokens_in",
        "tokens_out",
        "cost_usd",
        "answer",
        "model",
        "duration_s",
        "reason",
    ]
    assert list(out.report) == order
    assert (out.report["status"], out.report["answer"], out.report["error"]) == (
        "success",
        "all  done\nhere",
        None,
    )
