"""How an attempt's agent is started, and what it reported when it ended.

Every agent runs the same way, as a shell command started by the node's keeper (so it
outlives the daemon like any job); what differs is behind the :class:`~node_agent.agents.
base.Agent` protocol, and :data:`AGENTS` maps a job's ``agent`` to one:

- ``shell``: the job's command (:class:`~node_agent.agents.shell.ShellAgent`).
- ``llm``: ``python -m node_agent.agents.llm`` (:class:`~node_agent.agents.llm_agent.LlmAgent`).
- ``merge``: ``python -m node_agent.agents.merge_queue``, a run's branches merged one by
  one with a check between (``flota merge``; :class:`~node_agent.agents.merge.MergeAgent`).
- any other name, an agent CLI (claude, aider, codex ...): the command line the
  coordinator built from its template (:class:`~node_agent.agents.shell.CliAgent`).

With a check (``--check``), the agent runs in a child shell and the check runs after it
in the worktree; the check's exit status lands in a file next to the output, and in the
report as ``check``. To add an agent: implement the protocol, add it to :data:`AGENTS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from node_agent.agents.base import Agent, Command
from node_agent.agents.llm_agent import LlmAgent
from node_agent.agents.merge import MergeAgent
from node_agent.agents.shell import CliAgent, ShellAgent
from node_agent.local_models import LocalModel
from node_agent.models import AgentReport, Job

__all__ = ["AGENTS", "agent_for", "command_for", "read_report"]

CHECK_FILE = "check"

AGENTS: Mapping[str, Agent] = {"shell": ShellAgent(), "llm": LlmAgent(), "merge": MergeAgent()}
_TEMPLATE = CliAgent()  # every other name is an agent CLI's template

# The agent in a child shell, so that its `exit` does not skip the check.
_WITH_CHECK = (
    '/bin/bash -c "$FLOTA_AGENT_COMMAND"; rc=$?; '
    'printf "%s\\n" "[flota] check: $FLOTA_CHECK"; '
    '/bin/bash -c "$FLOTA_CHECK" 2>&1; printf "%s\\n" "$?" > "$FLOTA_CHECK_FILE"; '
    'exit "$rc"'
)


def agent_for(name: str) -> Agent:
    return AGENTS.get(name, _TEMPLATE)


def command_for(job: Job, journal_dir: Path, local_models: Sequence[LocalModel] = ()) -> Command:
    """The shell command for the attempt (its check included) and the environment it adds."""
    command = agent_for(job.agent).command(job, journal_dir, local_models)
    if not job.check:
        return command
    env = {
        **command.env,
        "FLOTA_AGENT_COMMAND": command.line,
        "FLOTA_CHECK": job.check,
        "FLOTA_CHECK_FILE": str(journal_dir / CHECK_FILE),
    }
    return Command(_WITH_CHECK, env)


def read_report(job: Job, journal_dir: Path, output: Path) -> AgentReport:
    """What the agent (and its check) said, once the process has ended."""
    check = ""
    try:
        check = "passed" if int((journal_dir / CHECK_FILE).read_text().strip()) == 0 else "failed"
    except (OSError, ValueError):
        pass
    report = agent_for(job.agent).report(job, journal_dir, output)
    return dataclasses.replace(report, check=check) if check else report
