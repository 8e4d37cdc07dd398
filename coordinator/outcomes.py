"""What happens to a job when one of its attempts ends: pure decisions, no I/O.

Every way an attempt ends goes through :func:`ended`: the node's own result, and the
verdicts the coordinator reaches itself (the node was lost or removed, its StartJob
failed, the node refused it, a cancel could not reach it). The attempt's `Cause` says
which, and the result's `EndReason` why the node ended it so, so the retry rules count
kinds of failure, never the wording of an error.

Retries (:func:`retryable`) are for what another attempt can fix: a lost node, a node that
stopped the job cut off (its work pushed, a retry may resume it), and a model server that
was the node's own. An agent's own limit (steps, budget, its time) is final: a retry
would spend it all again. A model server named by the job's api base is the same URL
for every node, so a failure to reach it is final too.

An attempt that no longer drives its job (an older one, or one whose job is already
decided) ends through :func:`late`: the first success wins, a later success is kept as
"superseded", and the coordinator's own guess gives way to what really happened.

:func:`released`: a run as a graph, what its jobs' ends do to the jobs waiting on them
(queued from their results once all have succeeded, cancelled when one has not).

:func:`reconnected` decides what to do with the jobs a node reports after a
(re)connect. :func:`to_retry` and :func:`retried`: a user's `flota retry`, which jobs it
takes and what it does to each. :func:`budget_spent` and :func:`not_started`: a run's
total budget (`flota run --budget`), once its ended attempts have spent it, ends its
queued jobs unstarted. The reconcile loop persists each `Decision` (store first, then memory) and
performs its effects; nothing here touches either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from coordinator.models import (
    ATTEMPT_ACTIVE,
    JOB_FINAL,
    Attempt,
    AttemptStatus,
    Cause,
    EndReason,
    Finished,
    Job,
    JobStatus,
    NodeJob,
    Result,
    ResultStatus,
)

__all__ = [
    "AGENT_LIMITS",
    "MAX_DISPATCH_FAILURES",
    "MAX_REFUSALS",
    "SUPERSEDED_ERROR",
    "WAITING_ON_DEPS",
    "AttemptEnd",
    "Decision",
    "JobChange",
    "Reconnect",
    "Released",
    "Retried",
    "budget_spent",
    "checked",
    "ended",
    "late",
    "not_started",
    "own_model_server",
    "reconnected",
    "released",
    "retried",
    "retryable",
    "to_retry",
]

MAX_DISPATCH_FAILURES = 5  # StartJob calls that failed before the job gives up
MAX_REFUSALS = 50  # "busy"/"stopping" refusals before a job gives up on being placed
SUPERSEDED_ERROR = "another attempt of this job succeeded first; its branch is kept"
WAITING_ON_DEPS = "waiting on its dependencies"  # until released() names which
_FINAL_RESULTS = frozenset(s.value for s in ResultStatus)
# The agent stopped at a limit the user set: another attempt would spend as much again.
AGENT_LIMITS = frozenset({EndReason.MAX_STEPS, EndReason.BUDGET, EndReason.TIME_LIMIT})
# Attempts that ran (or were lost running): they use up the job's attempts.
_RAN = frozenset({Cause.NODE, Cause.LOST})


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    status: AttemptStatus
    finished_at: float
    error: str
    cause: Cause


@dataclass(frozen=True, slots=True)
class JobChange:
    status: JobStatus
    node_id: str
    wait_reason: str
    result: Result | None
    branch: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class Decision:
    """An attempt's end and what it does to its job."""

    end: AttemptEnd
    result: Result  # recorded with the attempt
    job: JobChange | None = None  # None: the job stays as it is
    requeue: bool = False  # the job waits for a new attempt
    late: bool = False  # the attempt no longer drove its job
    cancel: tuple[str, ...] = ()  # other attempts of the job to stop on their nodes
    run_changed: bool = False  # a late result changed a job of a run that had ended


def checked(result: Result) -> Result:
    """A node's word on an attempt's status, checked like any input."""
    if result.status in _FINAL_RESULTS:
        return (
            result
            if isinstance(result.status, ResultStatus)
            else replace(result, status=ResultStatus(result.status))
        )
    return replace(result, status=ResultStatus.FAILED, error=f"node reported status {result.status!r}")


def own_model_server(job: Job) -> bool:
    """The job's model server is the node's own, found there: no api base was given and
    the job went to a node serving its model (the scheduler sends it only to such nodes),
    so another node has a server of its own."""
    return not job.api_base and job.requires.startswith("model:")


def retryable(job: Job, status: AttemptStatus, reason: EndReason) -> bool:
    """Whether an attempt that ended with `status` for `reason` is worth another attempt
    (while the job's attempts last)."""
    if status == AttemptStatus.LOST:  # the node went away with it
        return True
    if status == AttemptStatus.PARTIAL:  # cut off (or an older node that does not say why)
        return reason not in AGENT_LIMITS
    if status == AttemptStatus.FAILED and reason == EndReason.MODEL_UNREACHABLE:
        return own_model_server(job)
    return False


def _drives(job: Job, attempt: Attempt) -> bool:
    return job.status not in JOB_FINAL and bool(job.attempts) and job.attempts[-1] is attempt


def ended(job: Job, attempt: Attempt, result: Result, now: float, cause: Cause = Cause.NODE) -> Decision:
    """`attempt` of `job` ended with `result` (already checked and scrubbed): retry the
    job while its rules allow, else end it with that result."""
    if not _drives(job, attempt):
        return late(job, attempt, result, now)
    status = AttemptStatus(result.status)
    end = AttemptEnd(status, result.finished_at or now, result.error, cause)
    # The counts take this attempt's end into account, as the store will have it; the
    # attempts before the user's last retry are not counted.
    others = [a for a in job.attempts if a is not attempt and a.number > job.budget_from]
    ran = sum(1 for a in others if a.cause in _RAN) + (cause in _RAN)
    failures = sum(1 for a in others if a.cause == Cause.DISPATCH) + (cause == Cause.DISPATCH)
    refusals = sum(1 for a in others if a.cause == Cause.REFUSED) + (cause == Cause.REFUSED)
    again = (retryable(job, status, result.reason) and ran < job.max_attempts) or (
        cause in (Cause.DISPATCH, Cause.REFUSED)
        and failures < MAX_DISPATCH_FAILURES
        and refusals < MAX_REFUSALS
    )
    if again and not job.cancel_requested:
        change = JobChange(JobStatus.QUEUED, "", f"retrying: {result.error}", job.result, job.branch, now)
        return Decision(end, result, change, requeue=True)
    final = JobStatus(result.status)
    if job.cancel_requested and final != JobStatus.SUCCESS:
        final = JobStatus.CANCELLED
    kept = replace(result, status=ResultStatus(final))
    change = JobChange(final, job.node_id, job.wait_reason, kept, result.branch, now)
    return Decision(end, result, change)


def late(job: Job, attempt: Attempt, result: Result, now: float) -> Decision:
    """The end of an attempt that no longer drives its job. The first success wins: a
    late success takes a job that has none (and stops a retry still running); after a
    win, another success is recorded as superseded. A job that was not retried takes its
    attempt's real result in place of the coordinator's guess; a user's cancel stands."""
    success = result.status == ResultStatus.SUCCESS
    wins = success and job.status != JobStatus.SUCCESS and not job.cancel_requested
    replaces = (
        job.status in JOB_FINAL
        and job.status != JobStatus.SUCCESS
        and not job.cancel_requested
        and job.attempts[-1] is attempt
    )
    if success and not wins:
        end = AttemptEnd(AttemptStatus.SUPERSEDED, result.finished_at or now, SUPERSEDED_ERROR, Cause.NODE)
    else:
        end = AttemptEnd(AttemptStatus(result.status), result.finished_at or now, result.error, Cause.NODE)
    change = None
    if wins or replaces:
        change = JobChange(JobStatus(result.status), attempt.node_id, "", result, result.branch, now)
    cancel: tuple[str, ...] = ()
    if wins:
        cancel = tuple(a.id for a in job.attempts if a is not attempt and a.status in ATTEMPT_ACTIVE)
    return Decision(end, result, change, late=True, cancel=cancel, run_changed=change is not None)


@dataclass(frozen=True, slots=True)
class Reconnect:
    """What to do after a node reconnects and lists its jobs."""

    results: tuple[Finished, ...] = ()  # results it kept for us, with the output no one saw
    started: tuple[str, ...] = ()  # ours, running there: as if it said "started"
    cancel: tuple[str, ...] = ()  # running there, but given up here or cancelled by the user
    resend: tuple[str, ...] = ()  # ours, never reached it: StartJob again (idempotent)
    forgotten: tuple[str, ...] = ()  # ours and started, unknown there: lost


def reconnected(
    listed: list[NodeJob], active: dict[str, tuple[Job, Attempt]], before: dict[str, AttemptStatus]
) -> Reconnect:
    """`listed`: the node's jobs; `active`: this coordinator's active attempts; `before`:
    the statuses of the node's attempts taken before it was asked (an attempt dispatched
    while the call was out is not forgotten)."""
    results: list[Finished] = []
    started: list[str] = []
    cancel: list[str] = []
    for job in listed:
        if job.finished is not None:
            results.append(job.finished)
        elif job.attempt_id in active:
            started.append(job.attempt_id)
            if active[job.attempt_id][0].cancel_requested:  # a cancel it never heard
                cancel.append(job.attempt_id)
        else:
            cancel.append(job.attempt_id)
    known = {j.attempt_id for j in listed}
    resend: list[str] = []
    forgotten: list[str] = []
    for attempt_id, status in before.items():
        if attempt_id not in active or attempt_id in known:
            continue
        (resend if status == AttemptStatus.DISPATCHING else forgotten).append(attempt_id)
    return Reconnect(tuple(results), tuple(started), tuple(cancel), tuple(resend), tuple(forgotten))


@dataclass(frozen=True, slots=True)
class Retried:
    """A job a user retried: queued again as it was submitted. Its attempts stay as they
    are (the next one gets the next number, and so its own branch) and only the attempts
    after this one count against its budget."""

    status: JobStatus
    node_id: str
    wait_reason: str
    result: Result | None
    branch: str
    updated_at: float
    cancel_requested: bool
    budget_from: int
    bases: tuple[tuple[str, str], ...] = ()


def _busy(job: Job) -> str:
    """What a job is still doing, or "" once it has ended with no attempt out."""
    if job.status not in JOB_FINAL:
        return str(job.status)
    out = next((a for a in job.attempts if a.status in ATTEMPT_ACTIVE), None)
    return f"stopping attempt {out.id}" if out else ""


def to_retry(jobs: Sequence[Job], failed_only: bool, run_id: str = "") -> tuple[list[Job], str]:
    """Which of `jobs` a user's retry takes, or one line saying why none: `jobs` is one
    job, or every job of the run `run_id`. A job still queued or running (or stopping an
    attempt) is never retried: named alone, or in a whole run's retry, it refuses the
    request; with `failed_only` a run's active jobs are left alone (they have no final
    status yet), like its successes."""
    busy = [(j, _busy(j)) for j in jobs if _busy(j)]
    if not run_id:
        (job,) = jobs
        if busy:
            return [], f"job {job.id} is still {busy[0][1]}; wait for it to end, or cancel it first"
        if failed_only and job.status == JobStatus.SUCCESS:
            return [], f"nothing to retry: job {job.id} succeeded (without --failed it runs again)"
        return [job], ""
    if busy and not failed_only:
        return [], (
            f"run {run_id} still has job {busy[0][0].id} {busy[0][1]}; wait for it to end, "
            "or retry only the jobs that did not succeed (--failed)"
        )
    idle = [j for j in jobs if not _busy(j)]
    chosen = [j for j in idle if not (failed_only and j.status == JobStatus.SUCCESS)]
    if chosen:
        return chosen, ""
    if busy:
        first, doing = busy[0]
        return [], f"nothing to retry yet: no job of run {run_id} has failed (job {first.id} is {doing})"
    return [], f"nothing to retry: every job of run {run_id} succeeded"


def retried(job: Job, now: float) -> Retried:
    """An ended job queued again by the user: no node, no result, no branch until its next
    attempt ends; a cancel is forgotten, and the retry budget starts over."""
    if job.depends_on:  # it starts again from its dependencies' results: released() decides when
        return Retried(JobStatus.WAITING, "", WAITING_ON_DEPS, None, "", now, False, len(job.attempts))
    return Retried(JobStatus.QUEUED, "", "waiting for a node", None, "", now, False, len(job.attempts))


@dataclass(frozen=True, slots=True)
class Released:
    """A waiting job's change after its dependencies moved: queued (all succeeded; what it
    starts from), cancelled (one ended otherwise), or still waiting, on fewer of them."""

    job_id: str
    status: JobStatus
    wait_reason: str
    result: Result | None
    bases: tuple[tuple[str, str], ...]
    updated_at: float


def _start(deps: Sequence[Job], bases: dict[str, tuple[tuple[str, str], ...]]) -> tuple[tuple[str, str], ...]:
    """What a job whose dependencies all succeeded starts from: each one's pushed result
    (its branch and head), or what that one started from when it pushed nothing; the
    first is the base, the others are merged in on the node."""
    found: dict[str, str] = {}  # commit -> ref, in order
    for dep in deps:
        r = dep.result
        pairs = (
            ((f"refs/heads/{r.branch}", r.head_commit),)
            if r and r.branch and r.head_commit
            else bases[dep.id]
        )
        for ref, commit in pairs:
            found.setdefault(commit, ref)
    return tuple((ref, commit) for commit, ref in found.items())


def _ended_why(dep: Job, status: JobStatus, error: str) -> str:
    if status == JobStatus.FAILED:
        return f"dependency {dep.name} failed"
    if status == JobStatus.CANCELLED:
        return f"dependency {dep.name} was cancelled" + (
            f" ({error})" if error.startswith("dependency ") else ""
        )
    return f"dependency {dep.name} ended {status}"


def released(jobs: Sequence[Job], now: float) -> list[Released]:
    """What the current statuses of a run's `jobs` do to those waiting on dependencies.
    A job cancelled here cancels its own dependents in the same pass; a job queued here
    carries its start (`_start`). Applying the changes and asking again gives none: the
    loop asks after every change of a run, and once more at a restart."""
    by_id = {j.id: j for j in jobs}
    status = {j.id: j.status for j in jobs}
    bases = {j.id: j.bases for j in jobs}
    errors = {j.id: j.result.error if j.result else "" for j in jobs}
    changes: dict[str, Released] = {}
    moved = True
    while moved:
        moved = False
        for job in jobs:
            if status[job.id] != JobStatus.WAITING:
                continue
            deps = [by_id[d] for d in job.depends_on if d in by_id]
            ended = next(
                (d for d in deps if status[d.id] in JOB_FINAL and status[d.id] != JobStatus.SUCCESS), None
            )
            if ended is not None:
                why = errors[job.id] = _ended_why(ended, status[ended.id], errors[ended.id])
                change = Released(
                    job.id, JobStatus.CANCELLED, "", Result(ResultStatus.CANCELLED, error=why), (), now
                )
            elif all(status[d.id] == JobStatus.SUCCESS for d in deps):
                change = Released(
                    job.id, JobStatus.QUEUED, "waiting for a node", None, _start(deps, bases), now
                )
            else:
                names = [d.name for d in deps if status[d.id] != JobStatus.SUCCESS]
                reason = "waiting on " + ", ".join(names)
                if reason != changes.get(job.id, job).wait_reason:
                    changes[job.id] = Released(job.id, JobStatus.WAITING, reason, None, (), now)
                continue
            changes[job.id] = change
            status[job.id], bases[job.id] = change.status, change.bases
            moved = True
    return list(changes.values())


def budget_spent(budget_usd: float, spent_usd: float) -> str:
    """Why a run starts no more jobs: its total budget (`--budget`; 0: none) is spent by
    the attempts that ended. "" while some is left. Jobs already running go on (each has
    its own --budget-per-worker), so the total may pass the budget by what they spend."""
    if budget_usd <= 0 or spent_usd < budget_usd:
        return ""
    return f"the run's budget of ${budget_usd:.2f} is spent (${spent_usd:.4f} by its ended jobs)"


def not_started(job: Job, why: str, now: float) -> JobChange:
    """A queued job its run will not start (`why`: budget_spent's line): it ends cancelled."""
    result = Result(ResultStatus.CANCELLED, error=f"not started: {why}", reason=EndReason.RUN_BUDGET)
    return JobChange(JobStatus.CANCELLED, "", "", result, job.branch, now)
