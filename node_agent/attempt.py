"""One attempt as the runner holds it, and the pieces of it that are plain data work.

:class:`Attempt` is what the runner keeps per attempt while it drives it (its lifecycle
state, its process, its output, its helpers); :func:`result_of` writes the result down
from a lifecycle :class:`~node_agent.lifecycle.Finish` (which says how it ended) and
the facts the attempt gathered (commit, output, times, the agent's counts), deciding
nothing; :func:`job_env` is the environment every job gets, :func:`input_file` the file
a batch job's input is in.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from node_agent import lifecycle as lc
from node_agent.backlog import Backlog
from node_agent.meter.control import Meter
from node_agent.models import Job, Result
from node_agent.process import JobProcess, OutputTail
from node_agent.workspace import CommitOutcome
from protos.contract import ResultStatus, redact

__all__ = ["HELD_BYTES", "Attempt", "input_file", "job_env", "result_of", "without_secrets"]

# Output held while no coordinator listens (node_agent.backlog): the newest of it, at
# most this much, travels in the result (well under the 4 MiB message limit); the older
# lines are counted, and marked.
HELD_BYTES = 1 << 20


@dataclass
class Attempt:
    job: Job
    state: lc.State
    started_at: float  # wall clock, when the node accepted it
    events: asyncio.Queue[lc.Event] = field(default_factory=asyncio.Queue)
    cwd: Path | None = None
    proc: JobProcess | None = None
    reattach: bool = False  # a process found again after a restart: follow it from the start
    spawned_at: float = 0.0
    tail: OutputTail | None = None
    commit: CommitOutcome | None = None
    task: asyncio.Task[None] | None = None  # the driver
    # The driver's own task group: every helper of this attempt (git, the process
    # watch) runs in it, and ends with it.
    helpers: asyncio.TaskGroup | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)  # cancelled when the driver ends
    # Output read while no coordinator listened: sent when one does, or in the result.
    backlog: Backlog = field(default_factory=Backlog)
    secrets: Mapping[str, str] = field(default_factory=dict)  # in memory only, never journaled
    meter: Meter | None = None  # a job with a budget: its metering proxy, while it runs

    @property
    def id(self) -> str:
        return self.job.attempt_id

    def later(self, delay: float, event: lc.Event) -> None:
        """Feed ``event`` to the driver after ``delay`` seconds (unless it has ended)."""
        loop = asyncio.get_running_loop()
        self.timers.append(loop.call_later(delay, self.events.put_nowait, event))


def result_of(
    a: Attempt,
    finish: lc.Finish,
    node_id: str,
    now: float,
    held: tuple[str, ...],
    lost: tuple[int, int],
) -> Result:
    """The result of an attempt that ``finish`` ended; secrets redacted from what it says.
    ``held``: the output no coordinator has seen (the backlog's, marker first); ``lost``:
    (lines that never reached a coordinator, of them those the log marks where they were)."""
    job, report, commit = a.job, a.state.report, a.commit
    exit_code = finish.exit_code
    if exit_code is None:  # it never ran, or its status was lost
        exit_code = 0 if finish.status is ResultStatus.SUCCESS else -1
    pushed = commit is not None and commit.pushed
    return Result(
        job_id=job.job_id,
        attempt_id=job.attempt_id,
        status=finish.status,
        reason=finish.reason,
        metered=a.state.meter,
        exit_code=exit_code,
        error=redact(finish.error, a.secrets),
        branch=job.branch if pushed else "",
        base_commit=commit.base_commit if commit else "",
        head_commit=commit.head_commit if commit else "",
        files_modified=tuple(commit.files_modified) if commit else (),
        insertions=commit.insertions if commit else 0,
        deletions=commit.deletions if commit else 0,
        started_at=a.started_at,
        finished_at=now,
        duration_s=now - a.started_at,
        log_tail=redact("\n".join(a.tail.tail), a.secrets) if a.tail else "",
        steps=report.steps,
        tokens_in=report.tokens_in,
        tokens_out=report.tokens_out,
        cost_usd=report.cost_usd,
        node_id=node_id,
        model=job.model,
        # Lines no coordinator has seen travel in the result (bounded); beyond that, a count.
        log_lines=held,
        log_lines_lost=lost[0],
        log_lines_marked=lost[1],
        check=report.check,
        answer=redact(report.answer, a.secrets),
    )


def job_env(job: Job, cwd: Path, node_id: str, node_name: str) -> dict[str, str]:
    """The daemon's environment, the job's variables, and what flota tells every job."""
    env = dict(os.environ)
    env.update(job.env)
    env.update(
        FLOTA_JOB_ID=job.job_id,
        FLOTA_RUN_ID=job.run_id,
        FLOTA_ATTEMPT_ID=job.attempt_id,
        FLOTA_NODE_ID=node_id,
        FLOTA_NODE_NAME=node_name,
        FLOTA_WORKTREE=str(cwd),
    )
    return env


def input_file(job: Job, cwd: Path, journal_dir: Path) -> Path | None:
    """Where a batch job's input is (its $FLOTA_INPUT), written there first if it travelled
    with the job: at its input path in a scratch directory, else in the attempt's journal
    directory. With a repository and a path only, the file in the worktree. None: no input.
    Error handling: OSError from writing (the caller fails the spawn with it)."""
    if job.repo is not None and job.input_path and not job.input:
        return cwd / job.input_path
    if not job.input and not job.input_path:
        return None
    # input_path is checked (protos.limits.valid_input_path) and a scratch directory is new.
    path = cwd / job.input_path if job.repo is None and job.input_path else journal_dir / "input"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(job.input, encoding="utf-8")
    return path


def without_secrets(job: Job) -> Job:
    """The job as the journal (and ListJobs) keep it: secret names, never their values."""
    return replace(job, secrets=dict.fromkeys(job.secrets, ""))
