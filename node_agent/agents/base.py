"""The one small protocol every agent follows, and what its implementations share.

An agent is two things for the runner: the shell command that runs a job (and what it
adds to the job's environment), and how to read, once the command has ended, what the
agent said about its run (an :class:`~node_agent.models.AgentReport`). Everything else
(the keeper, the output, the timeout, the commit) is the same for every agent.
:mod:`node_agent.agents.launch` holds the registry that maps a job's ``agent`` to one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node_agent.local_models import LocalModel
from node_agent.models import AgentReport, Job

__all__ = ["Agent", "Command", "dig", "number"]


@dataclass(frozen=True)
class Command:
    """A shell command line and the variables it adds to the job's environment; ``warm``:
    it is the llm agent, which the node's agent host may fork instead (already warm)."""

    line: str
    env: Mapping[str, str]
    warm: bool = False


class Agent(Protocol):
    """How one kind of agent runs a job and reports on it."""

    def command(self, job: Job, journal_dir: Path, local_models: Sequence[LocalModel]) -> Command:
        """The command that runs ``job``; ``journal_dir`` is the attempt's own directory."""
        ...

    def report(self, job: Job, journal_dir: Path, output: Path) -> AgentReport:
        """What the agent said about its run, read after its process ended; empty if nothing."""
        ...


def dig(data: object, path: str) -> object:
    """``data["a"]["b"]`` for the dotted path "a.b", or None. A ``*`` stands for every
    entry of a mapping: the sum of what the rest of the path finds in each (Gemini CLI
    counts tokens per model), None if it finds nothing."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part == "*" and isinstance(data, Mapping):
            found = [dig(v, ".".join(parts[i + 1 :])) if i + 1 < len(parts) else v for v in data.values()]
            present = [v for v in found if v is not None]
            return sum(number(v) for v in present) if present else None
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def number(value: object) -> float:
    """A count or cost from an agent's JSON: a finite non-negative number, else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.0
    try:
        result = float(value)
    except ValueError:
        return 0.0
    return result if math.isfinite(result) and result >= 0 else 0.0
