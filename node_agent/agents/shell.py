"""Agents that are a command line: the shell agent, and agent CLIs (claude, aider, codex ...).

For a CLI, the coordinator built the command line from the CLI's template; the node runs
it like any shell job and reads cost and steps from the last JSON object it printed, at
the dotted paths the job names (``report_paths``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from node_agent.agents.base import Command, dig, number
from node_agent.local_models import LocalModel
from node_agent.models import AgentReport, Job

__all__ = ["CliAgent", "ShellAgent"]

_TAIL_BYTES = 1 << 20


class ShellAgent:
    """The job's command, nothing said about it."""

    def command(self, job: Job, journal_dir: Path, local_models: Sequence[LocalModel]) -> Command:
        return Command(job.command, {})

    def report(self, job: Job, journal_dir: Path, output: Path) -> AgentReport:
        return AgentReport()


class CliAgent(ShellAgent):
    """An agent CLI: the command its template made; counts from its last JSON object."""

    def report(self, job: Job, journal_dir: Path, output: Path) -> AgentReport:
        paths = job.report_paths
        data = _last_json_object(output) if paths else None
        if data is None:
            return AgentReport()

        def value(key: str) -> float:
            return number(dig(data, paths[key])) if key in paths else 0.0

        return AgentReport(
            steps=int(value("steps")),
            tokens_in=int(value("tokens_in")),
            tokens_out=int(value("tokens_out")),
            cost_usd=value("cost_usd"),
        )


def _last_json_object(output: Path) -> Mapping[str, object] | None:
    """The last line of the output that is a JSON object, or the whole tail if it is one."""
    try:
        with open(output, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - _TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for text in [*reversed(tail.splitlines()), tail]:
        text = text.strip()
        if text.startswith("{") and text.endswith("}"):
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None
