"""Agents that are a command line: the shell agent, and agent CLIs (claude, aider, codex ...).

For a CLI, the user's CLI built the command line from the CLI's template; the node runs
it like any shell job, its stdout also copied to a file of the attempt (``stdout``), and
reads cost and steps from the last JSON object that stdout ends with (one line or
indented over many), at the dotted paths the job names (``report_paths``; alternatives
separated by ``|``, the first present wins). Stderr, where CLIs log, is never read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from node_agent.agents.base import Command, dig, number
from node_agent.local_models import LocalModel
from node_agent.models import AgentReport, Job

__all__ = ["CliAgent", "ShellAgent", "last_json_object"]

STDOUT_FILE = "stdout"
_TAIL_BYTES = 1 << 20
_MAX_TRIES = 4096  # line starts tried from the end
_OBJECT_START = re.compile(r"^[ \t]*\{", re.MULTILINE)


class ShellAgent:
    """The job's command, nothing said about it."""

    def command(self, job: Job, journal_dir: Path, local_models: Sequence[LocalModel]) -> Command:
        return Command(job.command, {})

    def report(self, job: Job, journal_dir: Path, output: Path) -> AgentReport:
        return AgentReport()


class CliAgent(ShellAgent):
    """An agent CLI: the command its template made, its stdout kept apart for the report."""

    def command(self, job: Job, journal_dir: Path, local_models: Sequence[LocalModel]) -> Command:
        if not job.report_paths:
            return Command(job.command, {})
        # The CLI's exit status (pipefail; a shell without it: tee's), its stdout both in the
        # log and in the file.
        pipefail = "(set -o pipefail) 2>/dev/null && set -o pipefail"
        line = f'{pipefail}; {{ {job.command}\n}} | tee -- "$FLOTA_STDOUT_FILE"'
        return Command(line, {"FLOTA_STDOUT_FILE": str(journal_dir / STDOUT_FILE)})

    def report(self, job: Job, journal_dir: Path, output: Path) -> AgentReport:
        paths = job.report_paths
        data = last_json_object(journal_dir / STDOUT_FILE) if paths else None
        if data is None:
            return AgentReport()

        def value(key: str) -> float:
            found = (dig(data, alt) for alt in paths.get(key, "").split("|") if alt)
            return number(next((v for v in found if v is not None), None))

        return AgentReport(
            steps=int(value("steps")),
            tokens_in=int(value("tokens_in")),
            tokens_out=int(value("tokens_out")),
            cost_usd=value("cost_usd"),
        )


def last_json_object(path: Path) -> Mapping[str, object] | None:
    """The last JSON object in the file's tail that begins a line (indented JSON over
    many lines included: the outermost object, not one nested in it), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - _TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    decoder = json.JSONDecoder()
    best: tuple[int, Mapping[str, object]] | None = None  # (end, object)
    starts = [m.end() - 1 for m in _OBJECT_START.finditer(tail)]
    for pos in reversed(starts[-_MAX_TRIES:]):
        try:
            data, end = decoder.raw_decode(tail, pos)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        if best is not None and end < best[0]:
            break  # an earlier object, before the one found
        best = (end, data)
    return best[1] if best else None
