"""The daemon's side of the llm agent: how it is started and how its report is read.

The agent itself is ``python -m node_agent.agents.llm``, configured through FLOTA_LLM_*
variables; it writes a JSON report (steps, tokens, cost, status, answer) into the
attempt's journal directory. The daemon never imports it (litellm costs ~3 s and 180 MB):
the node's agent host (:func:`agent_host`) forks each llm job from a process that has.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from node_agent.agents.base import Command, number
from node_agent.local_models import LocalModel
from node_agent.models import AgentReport, Job
from node_agent.process import KeeperClient
from protos.contract import EndReason, ResultStatus

__all__ = ["AGENT_ARGV", "REPORT_FILE", "LlmAgent", "agent_host"]

REPORT_FILE = "report.json"
_VERDICTS = (ResultStatus.SUCCESS, ResultStatus.PARTIAL, ResultStatus.FAILED)
AGENT_ARGV = (sys.executable, "-m", "node_agent.agents.llm")


def agent_host(idle_s: float) -> KeeperClient:
    """The client of this node's llm agent host (node_agent.agents.llm.host), which forks
    each llm job warm and leaves after ``idle_s`` seconds without one; started at the
    first llm job (or by ``open``)."""
    program = [sys.executable, "-m", "node_agent.agents.llm.host", f"{idle_s:g}"]
    return KeeperClient(program, {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}, "llm agent host")


class LlmAgent:
    """flota's own tool-using agent, in its own process."""

    def command(self, job: Job, journal_dir: Path, local_models: Sequence[LocalModel]) -> Command:
        api_base = job.api_base or next((m.api_base for m in local_models if m.model == job.model), "")
        env = {
            "FLOTA_LLM_MODEL": job.model,
            "FLOTA_LLM_PROMPT": job.prompt,
            "FLOTA_LLM_MAX_STEPS": str(job.max_steps or 30),
            "FLOTA_LLM_BUDGET_USD": repr(job.budget_usd),
            # The runner enforces the job's timeout (status "timeout"); the agent then
            # writes its report on SIGTERM.
            "FLOTA_LLM_TIMEOUT_S": "0",
            "FLOTA_LLM_REPORT": str(journal_dir / REPORT_FILE),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        if api_base:
            env["FLOTA_LLM_API_BASE"] = api_base
            local_kind = job.model.startswith(("lm_studio/", "ollama/", "openai/"))
            if local_kind and "OPENAI_API_KEY" not in os.environ:
                env["OPENAI_API_KEY"] = "none"  # a local server wants some key (a secret still wins)
        return Command(shlex.join(AGENT_ARGV), env, warm=True)

    def report(self, job: Job, journal_dir: Path, output: Path) -> AgentReport:
        try:
            data = json.loads((journal_dir / REPORT_FILE).read_text())
        except (OSError, ValueError):
            return AgentReport()
        if not isinstance(data, dict):
            return AgentReport()
        status = str(data.get("status") or "")
        error = data.get("error")
        return AgentReport(
            status=ResultStatus(status) if status in _VERDICTS else None,
            error=str(error)[:500] if error else "",
            reason=EndReason.read(str(data.get("reason") or "")),
            steps=int(number(data.get("steps"))),
            tokens_in=int(number(data.get("tokens_in"))),
            tokens_out=int(number(data.get("tokens_out"))),
            cost_usd=number(data.get("cost_usd")),
            answer=str(data.get("answer") or "")[:4000],
        )
