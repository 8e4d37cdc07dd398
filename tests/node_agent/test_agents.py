"""node_agent/agents: one protocol, one registry; the command each agent runs and how its
report is read, with no processes."""

from __future__ import annotations

import json
import shlex
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


def test_cli_report_from_its_last_json_object(tmp_path: Path) -> None:
    spec = job(
        agent="claude", command="claude -p x", report_paths={"cost_usd": "usage.cost", "steps": "turns"}
    )
    output = tmp_path / "output"
    output.write_text('working\n{"usage": {"cost": 0.02}, "turns": 4}\nbye\n')
    assert read_report(spec, tmp_path, output) == AgentReport(steps=4, cost_usd=0.02)
    assert read_report(job(agent="claude", command="c"), tmp_path, output) == AgentReport()  # no paths


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
