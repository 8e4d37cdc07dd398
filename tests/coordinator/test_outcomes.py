"""coordinator/outcomes.py: what an attempt's end does to its job, table by table.

Pure functions over plain models: no store, no loop, no node. The cases are the ones
test_reconcile.py and test_late_results.py drive through the whole Reconciler.
"""

from __future__ import annotations

import pytest

from coordinator import outcomes
from coordinator.models import (
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
from coordinator.outcomes import (
    MAX_DISPATCH_FAILURES,
    MAX_REFUSALS,
    SUPERSEDED_ERROR,
    checked,
    ended,
    late,
    reconnected,
    retried,
    retryable,
    to_retry,
)

NOW = 1_700_000_100.0


def attempt(number: int, status: AttemptStatus = AttemptStatus.RUNNING, cause: Cause = Cause.NODE) -> Attempt:
    return Attempt(
        f"r1.1.a{number}", "r1.1", number, f"n{number}", status, f"flota/r1/1-a{number}", 0.0, cause=cause
    )


def job(
    *attempts: Attempt, status: JobStatus = JobStatus.RUNNING, max_attempts: int = 2, cancel: bool = False
) -> Job:
    j = Job("r1.1", "r1", 1, "job", "shell", "true", status, 0.0, 0.0, max_attempts=max_attempts)
    j.attempts.extend(attempts)
    j.cancel_requested = cancel
    j.node_id = attempts[-1].node_id if attempts else ""
    return j


def result(status: str, error: str = "", branch: str = "") -> Result:
    return Result(status=ResultStatus(status), error=error, branch=branch, finished_at=NOW - 1)


# --- an attempt that drives its job ends ----------------------------------------------------

# (result status, cause, max_attempts, cancel requested, earlier attempts' causes) ->
# (job status after, requeued)
ENDED = [
    ("success", Cause.NODE, 2, False, (), JobStatus.SUCCESS, False),
    ("failed", Cause.NODE, 2, False, (), JobStatus.FAILED, False),  # a job's own failure is final
    ("timeout", Cause.NODE, 3, False, (), JobStatus.TIMEOUT, False),
    ("lost", Cause.LOST, 2, False, (), JobStatus.QUEUED, True),  # lost: tried again elsewhere
    ("lost", Cause.LOST, 1, False, (), JobStatus.LOST, False),  # ... while its retries last
    ("partial", Cause.NODE, 2, False, (), JobStatus.QUEUED, True),
    ("partial", Cause.NODE, 1, False, (), JobStatus.PARTIAL, False),
    ("failed", Cause.NODE, 2, True, (), JobStatus.CANCELLED, False),  # the user's cancel names it
    ("success", Cause.NODE, 2, True, (), JobStatus.SUCCESS, False),  # ... unless it succeeded
    ("lost", Cause.LOST, 2, True, (), JobStatus.CANCELLED, False),  # a cancelled job is not retried
    ("failed", Cause.DISPATCH, 1, False, (), JobStatus.QUEUED, True),  # a failed start: again
    (
        "failed",
        Cause.DISPATCH,
        1,
        False,
        (Cause.DISPATCH,) * (MAX_DISPATCH_FAILURES - 2),
        JobStatus.QUEUED,
        True,
    ),
    (
        "failed",
        Cause.DISPATCH,
        1,
        False,
        (Cause.DISPATCH,) * (MAX_DISPATCH_FAILURES - 1),
        JobStatus.FAILED,
        False,
    ),
    ("failed", Cause.REFUSED, 1, False, (Cause.REFUSED,) * (MAX_REFUSALS - 2), JobStatus.QUEUED, True),
    ("failed", Cause.REFUSED, 1, False, (Cause.REFUSED,) * (MAX_REFUSALS - 1), JobStatus.FAILED, False),
    # refusals and failures are counted apart: many refusals do not use up the failures
    ("failed", Cause.DISPATCH, 1, False, (Cause.REFUSED,) * 10, JobStatus.QUEUED, True),
    ("failed", Cause.REJECTED, 3, False, (), JobStatus.FAILED, False),  # the node refused the spec
    ("failed", Cause.DISPATCH, 1, True, (), JobStatus.CANCELLED, False),
]


@pytest.mark.parametrize(("status", "cause", "tries", "cancel", "earlier", "after", "requeued"), ENDED)
def test_an_attempt_that_drives_its_job_ends(
    status: str,
    cause: Cause,
    tries: int,
    cancel: bool,
    earlier: tuple[Cause, ...],
    after: JobStatus,
    requeued: bool,
) -> None:
    olds = [attempt(i + 1, AttemptStatus.FAILED, c) for i, c in enumerate(earlier)]
    last = attempt(len(olds) + 1)
    j = job(*olds, last, max_attempts=tries, cancel=cancel)
    d = ended(j, last, result(status, "why", "flota/r1/1"), NOW, cause)
    assert d.job is not None and (d.job.status, d.requeue, d.late) == (after, requeued, False)
    assert (d.end.status, d.end.cause, d.end.finished_at) == (AttemptStatus(status), cause, NOW - 1)
    if requeued:
        assert (d.job.node_id, d.job.wait_reason, d.job.result) == ("", "retrying: why", None)
    else:
        assert d.job.result is not None and d.job.result.status == after
        assert d.job.branch == "flota/r1/1" and d.job.node_id == last.node_id


# Why the node ended it (result.reason), and where the model server is ->
# (job status after, requeued). Only what another attempt can fix is retried.
OWN = "model:ollama/qwen2.5-coder"  # no api base: the node's own server (the scheduler's "requires")
REASONS = [
    # the agent's own limits are final: another attempt would spend them all again
    ("partial", EndReason.MAX_STEPS, "", "", 2, JobStatus.PARTIAL, False),
    ("partial", EndReason.BUDGET, "", "", 3, JobStatus.PARTIAL, False),
    ("partial", EndReason.TIME_LIMIT, "", "", 2, JobStatus.PARTIAL, False),
    # cut off: its work is pushed, a retry elsewhere may finish it
    ("partial", EndReason.CUT_OFF, "", "", 2, JobStatus.QUEUED, True),
    ("partial", EndReason.NONE, "", "", 2, JobStatus.QUEUED, True),  # an older node that does not say
    # a model server named by --api-base is the same URL for every node, loopback or not
    ("failed", EndReason.MODEL_UNREACHABLE, "http://127.0.0.1:9/v1", "", 2, JobStatus.FAILED, False),
    ("failed", EndReason.MODEL_UNREACHABLE, "http://10.0.0.5:8000/v1", "", 2, JobStatus.FAILED, False),
    ("failed", EndReason.MODEL_UNREACHABLE, "", "", 2, JobStatus.FAILED, False),  # a provider's API
    # the node's own server: another node that serves the model has its own
    ("failed", EndReason.MODEL_UNREACHABLE, "", OWN, 2, JobStatus.QUEUED, True),
    ("failed", EndReason.MODEL_UNREACHABLE, "", OWN, 1, JobStatus.FAILED, False),  # while attempts last
    ("failed", EndReason.NONE, "", OWN, 2, JobStatus.FAILED, False),
    ("timeout", EndReason.NONE, "", "", 2, JobStatus.TIMEOUT, False),
]


@pytest.mark.parametrize(("status", "reason", "api_base", "requires", "tries", "after", "requeued"), REASONS)
def test_only_what_another_attempt_can_fix_is_retried(
    status: str, reason: EndReason, api_base: str, requires: str, tries: int, after: JobStatus, requeued: bool
) -> None:
    a = attempt(1)
    j = job(a, max_attempts=tries)
    j.api_base, j.requires = api_base, requires
    r = Result(status=ResultStatus(status), error="why", reason=reason, finished_at=NOW - 1)
    d = ended(j, a, r, NOW)
    assert d.job is not None and (d.job.status, d.requeue) == (after, requeued)
    assert retryable(j, AttemptStatus(status), reason) is requeued or tries == 1
    if not requeued:  # the job keeps why it ended, for `flota results`
        assert d.job.result is not None and d.job.result.reason == reason


def test_a_retry_after_an_unreachable_server_uses_up_an_attempt() -> None:
    first = attempt(1, AttemptStatus.FAILED)  # the node's own server was down there
    second = attempt(2)
    j = job(first, second, max_attempts=2)
    j.requires = OWN
    r = Result(status=ResultStatus.FAILED, error="down here too", reason=EndReason.MODEL_UNREACHABLE)
    d = ended(j, second, r, NOW)
    assert d.job is not None and (d.job.status, d.requeue) == (JobStatus.FAILED, False)


def test_a_retryable_status_counts_every_attempt_that_ran() -> None:
    first = attempt(1, AttemptStatus.LOST, Cause.LOST)
    second = attempt(2)
    d = ended(job(first, second, max_attempts=2), second, result("lost"), NOW, Cause.LOST)
    assert d.job is not None and d.job.status == JobStatus.LOST and not d.requeue


def test_an_attempt_without_a_finish_time_ends_now() -> None:
    a = attempt(1)
    d = ended(job(a), a, Result(status=ResultStatus.SUCCESS), NOW)
    assert d.end.finished_at == NOW


def test_an_older_attempt_goes_to_late() -> None:
    first, second = attempt(1, AttemptStatus.LOST, Cause.LOST), attempt(2)
    d = ended(job(first, second), first, result("failed"), NOW)
    assert d.late and d.job is None


def test_a_retried_job_has_its_whole_budget_again() -> None:
    # Two lost attempts used up max_attempts=2; the user retried (budget_from=2): the third,
    # lost too, is tried again, as a first attempt would be; the fourth is the last.
    olds = [attempt(1, AttemptStatus.LOST, Cause.LOST), attempt(2, AttemptStatus.LOST, Cause.LOST)]
    third = attempt(3)
    j = job(*olds, third, max_attempts=2)
    j.budget_from = 2
    d = ended(j, third, result("lost"), NOW, Cause.LOST)
    assert d.job is not None and d.job.status == JobStatus.QUEUED and d.requeue
    third.status = AttemptStatus.LOST
    fourth = attempt(4)
    j.attempts.append(fourth)
    d = ended(j, fourth, result("lost"), NOW, Cause.LOST)
    assert d.job is not None and d.job.status == JobStatus.LOST and not d.requeue


# --- a user's retry ---------------------------------------------------------------------------


def test_retried_queues_the_job_again_as_it_was_submitted() -> None:
    first = attempt(1, AttemptStatus.FAILED)
    j = job(first, status=JobStatus.CANCELLED, cancel=True)
    j.result, j.branch = result("cancelled", branch="flota/r1/1"), "flota/r1/1"
    r = retried(j, NOW)
    assert (r.status, r.node_id, r.result, r.branch, r.updated_at) == (JobStatus.QUEUED, "", None, "", NOW)
    assert (r.cancel_requested, r.budget_from, r.wait_reason) == (False, 1, "waiting for a node")
    assert j.attempts == [first] and j.status == JobStatus.CANCELLED  # pure: the job is as it was


def _run_job(index: int, status: JobStatus, *attempts: Attempt) -> Job:
    j = Job(f"r1.{index}", "r1", index, "job", "shell", "true", status, 0.0, 0.0)
    j.attempts.extend(attempts)
    return j


# (statuses of the run's jobs, one job (its index) or the run, --failed) ->
# (indexes retried, or the refusal's words)
S, F, L, C = JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.LOST, JobStatus.CANCELLED
Q, R = JobStatus.QUEUED, JobStatus.RUNNING
TO_RETRY = [
    ((F,), 1, False, [1]),
    ((S,), 1, False, [1]),  # a success runs again when asked
    ((S,), 1, True, "nothing to retry: job r1.1 succeeded (without --failed it runs again)"),
    ((C,), 1, True, [1]),  # cancelled, lost, timeout ...: not a success
    ((R,), 1, False, "job r1.1 is still running; wait for it to end, or cancel it first"),
    ((Q,), 1, True, "job r1.1 is still queued; wait for it to end, or cancel it first"),
    ((S, F, L), None, False, [1, 2, 3]),
    ((S, F, L), None, True, [2, 3]),
    (
        (F, R),
        None,
        False,
        "run r1 still has job r1.2 running; wait for it to end, or retry only the jobs "
        "that did not succeed (--failed)",
    ),
    ((F, R, S), None, True, [1]),  # the running job is left alone
    ((S, R), None, True, "nothing to retry yet: no job of run r1 has failed (job r1.2 is running)"),
    ((S, S), None, True, "nothing to retry: every job of run r1 succeeded"),
]


@pytest.mark.parametrize(("statuses", "which", "failed_only", "want"), TO_RETRY)
def test_which_jobs_a_retry_takes(
    statuses: tuple[JobStatus, ...], which: int | None, failed_only: bool, want: list[int] | str
) -> None:
    jobs = [_run_job(i, s) for i, s in enumerate(statuses, 1)]
    picked, why = to_retry([jobs[which - 1]] if which else jobs, failed_only, "" if which else "r1")
    if isinstance(want, str):
        assert (picked, why) == ([], want)
    else:
        assert ([j.index for j in picked], why) == (want, "")


def test_a_job_still_stopping_an_attempt_is_not_retried() -> None:
    # It ended (a late success won), but the retry that lost is still being stopped.
    out = attempt(2)
    j = _run_job(1, JobStatus.SUCCESS, attempt(1, AttemptStatus.SUCCESS), out)
    assert to_retry([j], False) == (
        [],
        "job r1.1 is still stopping attempt r1.1.a2; wait for it to end, or cancel it first",
    )
    out.status = AttemptStatus.CANCELLED
    assert to_retry([j], False) == ([j], "")


# --- late results ---------------------------------------------------------------------------

# (job status, which attempt reports (1 of 2, or the last), cancel, result) ->
# (attempt status after, job status after or None, attempts to cancel)
LATE = [
    # the job's last attempt was given up, then its real result arrives: it replaces the guess
    (JobStatus.LOST, "last", False, "success", AttemptStatus.SUCCESS, JobStatus.SUCCESS, ()),
    (JobStatus.LOST, "last", False, "failed", AttemptStatus.FAILED, JobStatus.FAILED, ()),
    (JobStatus.FAILED, "last", False, "timeout", AttemptStatus.TIMEOUT, JobStatus.TIMEOUT, ()),
    # an earlier attempt succeeds while a retry runs: it wins, and the retry is stopped
    (JobStatus.RUNNING, "first", False, "success", AttemptStatus.SUCCESS, JobStatus.SUCCESS, ("r1.1.a2",)),
    # ... but fails: recorded, the job goes on with its retry
    (JobStatus.RUNNING, "first", False, "failed", AttemptStatus.FAILED, None, ()),
    # the job already succeeded: a second success is kept, as superseded
    (JobStatus.SUCCESS, "first", False, "success", AttemptStatus.SUPERSEDED, None, ()),
    (JobStatus.SUCCESS, "last", False, "success", AttemptStatus.SUPERSEDED, None, ()),
    # a user's cancel stands, whatever comes back
    (JobStatus.CANCELLED, "last", True, "success", AttemptStatus.SUPERSEDED, None, ()),
    (JobStatus.CANCELLED, "last", True, "failed", AttemptStatus.FAILED, None, ()),
]


@pytest.mark.parametrize(
    ("job_status", "which", "cancel", "status", "attempt_after", "job_after", "stops"), LATE
)
def test_late_results(
    job_status: JobStatus,
    which: str,
    cancel: bool,
    status: str,
    attempt_after: AttemptStatus,
    job_after: JobStatus | None,
    stops: tuple[str, ...],
) -> None:
    first = attempt(1, AttemptStatus.LOST, Cause.LOST)
    active = job_status == JobStatus.RUNNING
    second = attempt(
        2, AttemptStatus.RUNNING if active else AttemptStatus.LOST, Cause.NODE if active else Cause.LOST
    )
    j = job(first, second, status=job_status, cancel=cancel)
    reporter = first if which == "first" else second
    d = late(j, reporter, result(status, "real"), NOW)
    assert d.late and d.end.status == attempt_after and d.end.cause == Cause.NODE
    assert d.cancel == stops
    assert (d.job.status if d.job else None) == job_after
    assert d.run_changed == (job_after is not None)
    if d.job is not None:
        assert (d.job.node_id, d.job.wait_reason) == (reporter.node_id, "")
    if attempt_after == AttemptStatus.SUPERSEDED:
        assert d.end.error == SUPERSEDED_ERROR


# --- who closed an attempt -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "closed_here"),
    [
        (Cause.NODE, False),  # the node's own result: a repeat delivery changes nothing
        (Cause.DISPATCH, True),  # the start seemed to fail, but the node ran it
        (Cause.LOST, True),  # given up while the node still ran it
        (Cause.UNREACHABLE, True),  # cancelled here, but the node could not be told
        (Cause.REFUSED, False),  # the node said no: it never ran
        (Cause.REJECTED, False),
    ],
)
def test_which_attempts_a_late_result_may_still_change(cause: Cause, closed_here: bool) -> None:
    assert cause.closed_here is closed_here


def test_a_status_no_node_should_send_is_a_failure() -> None:
    bad = checked(Result(status="exploded"))  # type: ignore[arg-type]
    assert (bad.status, bad.error) == (ResultStatus.FAILED, "node reported status 'exploded'")
    good = checked(Result(status="success"))  # type: ignore[arg-type]
    assert good.status is ResultStatus.SUCCESS


# --- after a reconnect -------------------------------------------------------------------------


def test_reconnected_sorts_what_the_node_has_against_what_we_think_it_has() -> None:
    kept = Result(status=ResultStatus.SUCCESS)
    a_done, a_running, a_cancel, a_resend, a_forgot, a_new = (attempt(i) for i in range(1, 7))
    a_resend.status = AttemptStatus.DISPATCHING
    jobs = {
        a.id: (job(a, cancel=a is a_cancel), a)
        for a in (a_done, a_running, a_cancel, a_resend, a_forgot, a_new)
    }
    listed = [
        NodeJob(a_done.id, Finished(a_done.id, kept, ("out",))),
        NodeJob(a_running.id),
        NodeJob(a_cancel.id),
        NodeJob("r9.1.a1"),  # not ours (any more)
    ]
    before = {a.id: a.status for a in (a_done, a_running, a_cancel, a_resend, a_forgot)}  # a_new came later
    plan = reconnected(listed, jobs, before)
    assert plan.results == (Finished(a_done.id, kept, ("out",)),)
    assert plan.started == (a_running.id, a_cancel.id)
    assert plan.cancel == (a_cancel.id, "r9.1.a1")
    assert plan.resend == (a_resend.id,)
    assert plan.forgotten == (a_forgot.id,)


# --- a run's total budget ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "spent", "stops"),
    [
        (0.0, 100.0, False),  # no budget: never
        (5.0, 0.0, False),
        (5.0, 4.9999, False),
        (5.0, 5.0, True),  # spent exactly: nothing more starts
        (5.0, 7.25, True),
    ],
)
def test_a_run_budget_is_spent_once_its_ended_jobs_reach_it(budget: float, spent: float, stops: bool) -> None:
    why = outcomes.budget_spent(budget, spent)
    assert bool(why) is stops
    if stops:
        assert why == f"the run's budget of ${budget:.2f} is spent (${spent:.4f} by its ended jobs)"


def test_a_job_not_started_for_the_budget_ends_cancelled_with_the_reason() -> None:
    change = outcomes.not_started(job(status=JobStatus.QUEUED), "the run's budget of $1.00 is spent", 50.0)
    assert (change.status, change.node_id, change.updated_at) == (JobStatus.CANCELLED, "", 50.0)
    assert change.result is not None
    assert change.result.status == ResultStatus.CANCELLED and change.result.reason == EndReason.RUN_BUDGET
    assert change.result.error == "not started: the run's budget of $1.00 is spent"
