"""coordinator/outcomes.released: what the ends of a run's jobs do to the jobs waiting on
them (a run as a graph), and a retried job of a graph. Pure: plain models in, changes out.
And the graphs the coordinator's submit refuses (validate.py, with protos/graph.py)."""

from __future__ import annotations

import pytest

from coordinator.errors import InvalidRequest
from coordinator.models import Job, JobStatus, Result, ResultStatus
from coordinator.outcomes import WAITING_ON_DEPS, Released, released, retried
from coordinator.validate import submission
from protos.flota.v1 import coordinator_pb2

NOW = 1_700_000_100.0
A, B = "a" * 40, "b" * 40


def node(index: int, name: str, status: JobStatus, *deps: int, head: str = "", error: str = "") -> Job:
    j = Job(f"r1.{index}", "r1", index, name, "shell", "true", status, 0.0, 0.0)
    j.depends_on = tuple(f"r1.{d}" for d in deps)
    if status in (JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED):
        branch = f"flota/r1/{index}" if head else ""
        j.result = Result(ResultStatus(status.value), branch=branch, head_commit=head, error=error)
    if status == JobStatus.WAITING:
        j.wait_reason = WAITING_ON_DEPS
    return j


def by_id(changes: list[Released]) -> dict[str, tuple[str, str, str, tuple[tuple[str, str], ...]]]:
    return {
        c.job_id: (c.status.value, c.wait_reason, c.result.error if c.result else "", c.bases)
        for c in changes
    }


def test_a_job_waits_on_the_dependencies_not_done_yet() -> None:
    jobs = [
        node(1, "coder", JobStatus.RUNNING),
        node(2, "docs", JobStatus.SUCCESS, head=A),
        node(3, "reviewer", JobStatus.WAITING, 1, 2),
    ]
    assert by_id(released(jobs, NOW)) == {"r1.3": ("waiting", "waiting on coder", "", ())}
    jobs[2].wait_reason = "waiting on coder"
    assert released(jobs, NOW) == []  # asked again: nothing new


def test_a_job_whose_dependencies_succeeded_is_queued_from_their_results() -> None:
    jobs = [
        node(1, "coder", JobStatus.SUCCESS, head=A),
        node(2, "docs", JobStatus.SUCCESS, head=B),
        node(3, "quiet", JobStatus.SUCCESS),  # changed nothing: pushed no branch
        node(4, "tester", JobStatus.WAITING, 1),
        node(5, "reviewer", JobStatus.WAITING, 1, 2, 3),
        node(6, "base", JobStatus.WAITING, 3),
    ]
    assert by_id(released(jobs, NOW)) == {
        "r1.4": ("queued", "waiting for a node", "", (("refs/heads/flota/r1/1", A),)),
        "r1.5": (
            "queued",
            "waiting for a node",
            "",
            (("refs/heads/flota/r1/1", A), ("refs/heads/flota/r1/2", B)),
        ),
        "r1.6": ("queued", "waiting for a node", "", ()),  # the run's own base
    }


def test_a_dependency_that_did_not_succeed_cancels_its_dependents_through_the_graph() -> None:
    jobs = [
        node(1, "coder", JobStatus.FAILED, error="exit 3"),
        node(2, "tester", JobStatus.WAITING, 1),
        node(3, "docs", JobStatus.WAITING, 2),
        node(4, "other", JobStatus.CANCELLED, error="cancelled by the user"),
        node(5, "after-other", JobStatus.WAITING, 4),
        node(6, "slow", JobStatus.TIMEOUT),
        node(7, "after-slow", JobStatus.WAITING, 6),
    ]
    assert by_id(released(jobs, NOW)) == {
        "r1.2": ("cancelled", "", "dependency coder failed", ()),
        "r1.3": ("cancelled", "", "dependency tester was cancelled (dependency coder failed)", ()),
        "r1.5": ("cancelled", "", "dependency other was cancelled", ()),
        "r1.7": ("cancelled", "", "dependency slow ended timeout", ()),
    }


def test_a_retried_job_of_a_graph_waits_on_its_dependencies_again() -> None:
    j = node(2, "tester", JobStatus.CANCELLED, 1, error="dependency coder failed")
    j.bases = (("refs/heads/flota/r1/1", A),)
    r = retried(j, NOW)
    assert (r.status, r.wait_reason, r.bases) == (JobStatus.WAITING, WAITING_ON_DEPS, ())
    alone = retried(node(1, "coder", JobStatus.FAILED), NOW)
    assert alone.status == JobStatus.QUEUED


def _request(*tasks: tuple[str, list[str]]) -> coordinator_pb2.SubmitRunRequest:
    return coordinator_pb2.SubmitRunRequest(
        tasks=[coordinator_pb2.TaskSpec(name=n, command="true", depends_on=d) for n, d in tasks]
    )


def test_the_coordinator_refuses_a_graph_it_cannot_run() -> None:
    ok = submission(_request(("coder", []), ("tester", ["coder"])))
    assert [t.depends_on for t in ok.tasks] == [(), ("coder",)]
    for tasks, said in [
        ((("a", ["b"]), ("b", ["a"])), "a cycle: a -> b -> a"),
        ((("a", ["ghost"]),), "task 'a' depends on 'ghost', which is not a task of the plan"),
        ((("a", []), ("a", ["a"])), "the tasks of a graph need unique names (given twice: 'a')"),
        ((("a", ["a"]), ("b", ["a", "a"])), "task 'a' depends on itself (and 1 more)"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            submission(_request(*tasks))
        assert str(caught.value) == said
