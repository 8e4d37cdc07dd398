"""node_agent/agents: one protocol, one registry; the command each agent runs and how its
report is read, with no processes."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from node_agent.agents.launch import AGENTS, agent_for, command_for, read_report
from node_agent.agents.llm_agent import LlmAgent
from node_agent.agents.shell import CliAgent, ShellAgent
from node_agent.local_models import LocalModel
from node_agent.models import AgentReport, Job
from protos.contract import EndReason, ResultStatus


def job(**kw: object) -> Job:
    return Job("r1.0", "r1", "r1.0.a1", **kw)  # type: ignore[arg-type]


def test_the_registry() -> None:
    assert isinstance(AGENTS["shell"], ShellAgent) and isinstance(AGENTS["llm"], LlmAgent)
    assert isinstance(agent_for("claude"), CliAgent)  # any other name is an agent CLI's template


def test_shell_runs_its_command_and_reports_nothing(tmp_path: Path) -> None:
    command = command_for(job(command="make"), tmp_path)
    assert (command.line, dict(command.env)) == ("make", {})
    (tmp_path / "output").write_text('{"steps": 3}\n')
    assert read_report(job(command="make"), tmp_path, tmp_path / "output") == AgentReport()


def test_llm_runs_the_agent_module_with_its_environment(tmp_path: Path) -> None:
    spec = job(agent="llm", prompt="fix", model="lm_studio/qwen", max_steps=5, budget_usd=0.5)
    command = command_for(spec, tmp_path, [LocalModel("lm_studio/qwen", "http://127.0.0.1:1234/v1")])
    assert command.line == shlex.join([sys.executable, "-m", "node_agent.agents.llm"])
    env = dict(command.env)
    assert env["FLOTA_LLM_MODEL"] == "lm_studio/qwen" and env["FLOTA_LLM_PROMPT"] == "fix"
    assert (env["FLOTA_LLM_MAX_STEPS"], env["FLOTA_LLM_BUDGET_USD"]) == ("5", "0.5")
    assert env["FLOTA_LLM_API_BASE"] == "http://127.0.0.1:1234/v1"  # the node's own server for it
    assert env["FLOTA_LLM_REPORT"] == str(tmp_path / "report.json")


def test_llm_report(tmp_path: Path) -> None:
    spec = job(agent="llm", prompt="fix", model="m")
    assert read_report(spec, tmp_path, tmp_path / "output") == AgentReport()  # none written
    report = {
        "status": "partial",
        "error": "stopped after 5 steps",
        "steps": 5,
        "cost_usd": 0.1,
        "answer": "a",
        "reason": "max_steps",
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert read_report(spec, tmp_path, tmp_path / "output") == AgentReport(
        status=ResultStatus.PARTIAL,
        error="stopped after 5 steps",
        steps=5,
        cost_usd=0.1,
        answer="a",
        reason=EndReason.MAX_STEPS,
    )
    # A reason this version does not know says nothing (a newer agent's word).
    (tmp_path / "report.json").write_text(json.dumps({**report, "reason": "sunspots"}))
    assert read_report(spec, tmp_path, tmp_path / "output").reason == EndReason.NONE
    (tmp_path / "report.json").write_text(json.dumps({"status": "exploded", "steps": -3}))
    assert read_report(spec, tmp_path, tmp_path / "output") == AgentReport()


def test_cli_report_from_its_last_json_object_on_stdout(tmp_path: Path) -> None:
    spec = job(
        agent="claude", command="claude -p x", report_paths={"cost_usd": "usage.cost", "steps": "turns"}
    )
    output = tmp_path / "output"  # stdout and stderr together: never read for the report
    output.write_text('{"usage": {"cost": 9}, "turns": 9}\n')
    (tmp_path / "stdout").write_text('working\n{"usage": {"cost": 0.02}, "turns": 4}\nbye\n')
    assert read_report(spec, tmp_path, output) == AgentReport(steps=4, cost_usd=0.02)
    assert read_report(job(agent="claude", command="c"), tmp_path, output) == AgentReport()  # no paths


def test_cli_report_from_indented_json_after_debug_lines_with_alternative_paths(tmp_path: Path) -> None:
    spec = job(
        agent="architect",
        command="architect run x",
        report_paths={
            "cost_usd": "costs.total_cost_usd|cost",
            "steps": "steps",
            "tokens_in": "costs.total_input_tokens",
            "tokens_out": "nowhere|costs.total_output_tokens",
        },
    )
    final = {
        "status": "success",
        "steps": 3,
        "tools_used": [{"name": "write_file", "steps": 99}],
        "costs": {"total_input_tokens": 20, "total_output_tokens": 10, "total_cost_usd": 0.5},
        "cost": 0.25,
    }
    debug = '21:48:51 - LiteLLM:DEBUG: {"steps": 7}\n{"steps": 8, "cost": 1}\n'
    (tmp_path / "stdout").write_text(debug + json.dumps(final, indent=2) + "\n")
    expected = AgentReport(steps=3, tokens_in=20, tokens_out=10, cost_usd=0.5)
    assert read_report(spec, tmp_path, tmp_path / "output") == expected
    # The first alternative present wins; the second when the first is missing.
    del final["costs"]["total_cost_usd"]  # type: ignore[attr-defined]
    (tmp_path / "stdout").write_text(debug + json.dumps(final, indent=2))
    assert read_report(spec, tmp_path, tmp_path / "output").cost_usd == 0.25


def test_a_cli_runs_with_its_stdout_copied_apart_and_its_exit_status_kept(tmp_path: Path) -> None:
    spec = job(agent="x", command="echo out; echo err >&2; exit 3", report_paths={"steps": "s"})
    command = command_for(spec, tmp_path)
    proc = subprocess.run(
        ["/bin/bash", "-c", command.line],
        env={**os.environ, **command.env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")  # the log has both
    assert (tmp_path / "stdout").read_text() == "out\n"
    # Without report paths nothing is read, and the command is the job's as it is.
    assert command_for(job(agent="x", command="make"), tmp_path).line == "make"


def test_a_check_wraps_any_agent_and_lands_in_the_report(tmp_path: Path) -> None:
    spec = job(command="make", check="make test")
    command = command_for(spec, tmp_path)
    env = dict(command.env)
    assert (env["FLOTA_AGENT_COMMAND"], env["FLOTA_CHECK"]) == ("make", "make test")
    assert "$FLOTA_CHECK" in command.line
    (tmp_path / "check").write_text("1\n")
    assert read_report(spec, tmp_path, tmp_path / "output").check == "failed"
    (tmp_path / "check").write_text("0\n")
    assert read_report(spec, tmp_path, tmp_path / "output").check == "passed"
