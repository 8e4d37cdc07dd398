"""The daemon's side of the merge queue (a job of ``flota merge``, agent ``merge``).

The job's command is the queue (JSON, built by the CLI); the process is
``python -m node_agent.agents.merge_queue``, which writes what happened to each branch in
a report in the attempt's journal directory; the daemon passes it on as the job's answer.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from node_agent.agents.base import Command
from node_agent.local_models import LocalModel
from node_agent.models import AgentReport, Job
from protos.contract import ResultStatus

__all__ = ["MERGE_REPORT", "MergeAgent"]

MERGE_REPORT = "merge.json"
_ANSWER_CHARS = 4000


class MergeAgent:
    """Merges a run's branches one by one with a check between (the queue's own process)."""

    def command(self, job: Job, journal_dir: Path, local_models: Sequence[LocalModel]) -> Command:
        env = {"FLOTA_MERGE_QUEUE": job.command, "FLOTA_MERGE_REPORT": str(journal_dir / MERGE_REPORT)}
        return Command(shlex.join([sys.executable, "-m", "node_agent.agents.merge_queue"]), env)

    def report(self, job: Job, journal_dir: Path, output: Path) -> AgentReport:
        try:
            data = json.loads((journal_dir / MERGE_REPORT).read_text())
        except (OSError, ValueError):
            return AgentReport()
        if not isinstance(data, dict):
            return AgentReport()
        failed = data.get("status") != "success"
        return AgentReport(
            status=ResultStatus.FAILED if failed else ResultStatus.SUCCESS,
            error=str(data.get("error") or "")[:500],
            answer=_answer(data),
        )


def _answer(data: dict[str, object]) -> str:
    """The report as JSON within the answer's limit: the check tails shortened first."""
    text = json.dumps(data)
    outcomes = data.get("outcomes")
    if len(text) > _ANSWER_CHARS and isinstance(outcomes, list):
        for o in outcomes:
            if isinstance(o, dict) and "tail" in o:
                o["tail"] = str(o["tail"])[-120:]
        text = json.dumps(data)
    return text[:_ANSWER_CHARS]
