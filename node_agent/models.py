"""What the node works with inside: plain frozen dataclasses, no proto, no I/O.

The wire's ``JobSpec`` and ``JobResult`` become a :class:`Job` and a :class:`Result` at
the edge (:mod:`node_agent.convert`: the servicer, the hub's session stream and the
journal's files); the runner, the lifecycle, the journal and the agents see only these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from protos.contract import EndReason, ResultStatus

__all__ = ["AgentReport", "Job", "Metered", "Repo", "Resources", "Result"]


@dataclass(frozen=True)
class Repo:
    """The git remote a job fetches its base from and pushes its branch to."""

    url: str
    base_ref: str  # the ref on the remote that holds base_commit; "" to fetch the commit itself
    base_commit: str


@dataclass(frozen=True)
class Resources:
    """What the job asked the scheduler for (the node keeps it, it does not enforce it)."""

    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0


@dataclass(frozen=True)
class Job:
    """One attempt of one job, as the coordinator asked this node to run it."""

    job_id: str
    run_id: str
    attempt_id: str
    agent: str = "shell"  # shell | llm | the name of an agent CLI template
    command: str = ""
    prompt: str = ""
    model: str = ""
    repo: Repo | None = None  # None: the job runs in a scratch directory
    branch: str = ""  # the result branch to create and push
    timeout_s: float = 0.0  # 0: none
    env: Mapping[str, str] = field(default_factory=dict)
    resources: Resources | None = None
    name: str = ""
    resume_branches: tuple[str, ...] = ()  # earlier attempts' branches, newest first
    secrets: Mapping[str, str] = field(default_factory=dict)  # values in memory only
    max_steps: int = 0
    budget_usd: float = 0.0
    api_base: str = ""
    check: str = ""  # run in the worktree after the agent
    report_paths: Mapping[str, str] = field(default_factory=dict)  # agent CLIs: where their JSON keeps counts
    allow_empty: bool = False  # push a commit even when the job changed nothing
    merges: tuple[Repo, ...] = ()  # a job of a graph: its other dependencies' results, merged in
    ignore_paths: tuple[str, ...] = ()  # an agent CLI's own files: left out of the commit
    input: str = ""  # batch: its input text, written to the file $FLOTA_INPUT names
    input_path: str = ""  # batch: that file, relative to its working directory


@dataclass(frozen=True)
class AgentReport:
    """What an agent said about its own run; empty for a plain shell job."""

    status: ResultStatus | None = None  # the agent's own verdict (llm: success | partial | failed)
    error: str = ""
    reason: EndReason = EndReason.NONE  # why it stopped short (llm: max_steps, budget, ...)
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    check: str = ""  # passed | failed | "" (no check)
    answer: str = ""


@dataclass(frozen=True)
class Metered:
    """What a job's metering proxy counted (a job with a budget; node_agent.meter)."""

    calls: int = 0  # passed on to the provider
    refused: int = 0  # refused: each would have passed the budget
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    priced: bool = True  # False: a model called has no price (its cost counted as 0)
    note: str = ""
    budget_usd: float = 0.0
    refusal: str = ""  # the line the last refused call was told (not on the wire)


@dataclass(frozen=True)
class Result:
    """The outcome of one attempt, as the node reports it."""

    job_id: str
    attempt_id: str
    status: ResultStatus
    exit_code: int = 0  # -1: unknown (it never ran, or its status was lost)
    error: str = ""  # one line, "" on success
    branch: str = ""  # "" when nothing was pushed
    base_commit: str = ""
    head_commit: str = ""
    files_modified: tuple[str, ...] = ()
    insertions: int = 0
    deletions: int = 0
    started_at: float = 0.0  # unix seconds
    finished_at: float = 0.0
    duration_s: float = 0.0
    log_tail: str = ""
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    node_id: str = ""
    model: str = ""
    log_lines_lost: int = 0  # output lines no coordinator received
    log_lines: tuple[str, ...] = ()  # output no coordinator received while the job ran
    log_lines_marked: int = 0  # of log_lines_lost, those the log marks where they were lost
    check: str = ""
    answer: str = ""
    reason: EndReason = EndReason.NONE  # why it ended so, where the status does not say
    metered: Metered | None = None  # a job with a budget: its metering proxy's count
