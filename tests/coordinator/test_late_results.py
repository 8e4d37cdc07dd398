"""Faults at the coordinator: late results, first success wins, partial work, drain, grace.

Same harness as test_reconcile.py: a real Reconciler and Store, fake links, a fake clock.
Every test asserts the final state of each job and attempt in memory and in the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.models import Job, Repo, Run
from tests.coordinator.fakes import (
    FakeLink,
    Harness,
    heartbeat,
    idle,
    make_run,
    result_event,
    started,
    until,
)

REPO = Repo("file:///srv/x.git", "refs/flota/base/r000001", "a" * 40)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


async def place(h: Harness, link: FakeLink, job: Job) -> str:
    """Tick until `link` was asked to start a new attempt of `job`; report it started."""
    h.step()
    return await started_on(h, link, job)


async def started_on(h: Harness, link: FakeLink, job: Job) -> str:
    """Wait until `link` was asked to start `job`'s latest attempt; report it started."""
    await until(lambda: job.attempts and link.starts and link.starts[-1].attempt_id == job.attempts[-1].id)
    await idle()
    attempt = job.attempts[-1]
    h.rec.sessions.on_event(attempt.node_id, started(job.id, attempt.id))
    return attempt.id


def lose(h: Harness, node_id: str, keep_alive: list[str]) -> None:
    """Silence `node_id` past the grace while the nodes in `keep_alive` keep beating."""
    for _ in range(8):
        h.clock.advance(4)
        for other in keep_alive:
            h.rec.sessions.on_event(other, heartbeat(other, h.rec.fleet[other].name))
        h.step()
    assert h.rec.fleet[node_id].state == "lost"


def back(h: Harness, node_id: str) -> None:
    h.rec.sessions.on_event(node_id, heartbeat(node_id, h.rec.fleet[node_id].name))


async def one_job_lost_on_a(h: Harness, **fields: object) -> tuple[Run, Job, FakeLink, FakeLink]:
    """A one-job run placed on node-a (node-b drained meanwhile), node-a then lost."""
    a = h.node("nA", "node-a")
    b = h.node("nB", "node-b")
    h.rec.drain(h.rec.fleet["nB"], True)
    run = make_run(repo=REPO, **fields)
    h.rec.submit(run)
    job = run.jobs[0]
    await place(h, a, job)
    assert job.attempts[0].node_id == "nA"
    h.rec.drain(h.rec.fleet["nB"], False)
    lose(h, "nA", keep_alive=["nB"])
    return run, job, a, b


def test_late_success_after_the_retry_won_is_superseded_and_keeps_its_branch(h: Harness) -> None:
    async def scenario() -> None:
        run, job, a, b = await one_job_lost_on_a(h, max_attempts=2)
        second = await started_on(h, b, job)
        h.rec.sessions.on_event("nB", result_event(job.id, second, "success", branch="flota/r000001/1-a2"))
        assert (job.status, run.status) == ("success", "success")

        back(h, "nA")
        h.rec.sessions.on_event(
            "nA", result_event(job.id, job.attempts[0].id, "success", branch="flota/r000001/1")
        )
        stored = h.stored(job)
        assert [(x.status, x.branch) for x in stored.attempts] == [
            ("superseded", "flota/r000001/1"),
            ("success", "flota/r000001/1-a2"),
        ]
        assert stored.result is not None and stored.result.branch == "flota/r000001/1-a2"
        assert (stored.status, h.stored_run(run.id).status) == ("success", "success")
        # Acked all the same: the node may forget it.
        h.step()
        await until(lambda: [job.attempts[0].id] in a.acks, "ack of the late result")

    h.run(scenario)


def test_late_success_while_the_retry_runs_wins_and_the_retry_is_stopped(h: Harness) -> None:
    async def scenario() -> None:
        run, job, a, b = await one_job_lost_on_a(h, max_attempts=2)
        second = await started_on(h, b, job)
        back(h, "nA")
        h.rec.sessions.on_event(
            "nA", result_event(job.id, job.attempts[0].id, "success", branch="flota/r000001/1")
        )
        assert (job.status, job.branch, run.status) == ("success", "flota/r000001/1", "success")
        await until(lambda: second in [c[0] for c in b.cancels], "the retry cancelled")
        # The retry ends later, successfully after all: recorded, never a second winner.
        h.rec.sessions.on_event("nB", result_event(job.id, second, "success", branch="flota/r000001/1-a2"))
        stored = h.stored(job)
        assert [x.status for x in stored.attempts] == ["success", "superseded"]
        assert stored.result is not None and stored.result.branch == "flota/r000001/1"
        assert h.stored_run(run.id).status == "success"

    h.run(scenario)


@pytest.mark.parametrize(
    ("late", "job_after", "run_after"), [("success", "success", "success"), ("failed", "failed", "failed")]
)
def test_a_job_that_was_not_retried_takes_the_late_result(
    h: Harness, late: str, job_after: str, run_after: str
) -> None:
    async def scenario() -> None:
        run, job, a, _ = await one_job_lost_on_a(h, max_attempts=1)
        assert (job.status, run.status) == ("lost", "failed")
        assert run.id not in h.rec.runs  # finished: only the store knows it now

        back(h, "nA")
        h.rec.sessions.on_event(
            "nA", result_event(job.id, job.attempts[0].id, late, branch="flota/r000001/1")
        )
        stored = h.stored(job)
        assert (stored.status, [x.status for x in stored.attempts]) == (job_after, [late])
        assert stored.result is not None and stored.result.branch == "flota/r000001/1"
        assert h.stored_run(run.id).status == run_after
        # Delivered again (the ack got lost): nothing changes.
        h.rec.sessions.on_event("nA", result_event(job.id, job.attempts[0].id, "failed"))
        assert h.stored(job).status == job_after

    h.run(scenario)


def test_a_node_cannot_report_for_another_nodes_attempt(h: Harness) -> None:
    async def scenario() -> None:
        run, job, _, b = await one_job_lost_on_a(h, max_attempts=1)
        h.rec.sessions.on_event("nB", result_event(job.id, job.attempts[0].id, "success", branch="flota/x"))
        stored = h.stored(job)
        assert (stored.status, stored.attempts[0].status) == ("lost", "lost")

    h.run(scenario)


def test_partial_work_is_retried_and_the_retry_resumes_from_its_branch(h: Harness) -> None:
    async def scenario() -> None:
        a = h.node("nA", "node-a")
        run = make_run(repo=REPO, max_attempts=2, resume_from_partial=True)
        h.rec.submit(run)
        job = run.jobs[0]
        first = await place(h, a, job)
        h.rec.sessions.on_event("nA", result_event(job.id, first, "partial", branch="flota/r000001/1"))
        assert job.status == "queued" and job.wait_reason.startswith("retrying")
        await place(h, a, job)
        spec = a.starts[-1]
        assert list(spec.resume_branches) == ["flota/r000001/1"]
        assert spec.branch == "flota/r000001/1-a2"

    h.run(scenario)


def test_without_resume_a_retry_starts_from_the_base(h: Harness) -> None:
    async def scenario() -> None:
        a = h.node("nA", "node-a")
        run = make_run(repo=REPO, max_attempts=2)
        h.rec.submit(run)
        job = run.jobs[0]
        first = await place(h, a, job)
        h.rec.sessions.on_event("nA", result_event(job.id, first, "partial", branch="flota/r000001/1"))
        await place(h, a, job)
        assert list(a.starts[-1].resume_branches) == []

    h.run(scenario)


def test_a_draining_node_gets_no_new_job_and_its_running_one_finishes(h: Harness) -> None:
    async def scenario() -> None:
        a = h.node("nA", "node-a")
        run = make_run(jobs=2, repo=None)
        h.rec.submit(run)
        first, second = run.jobs
        entry = h.rec.fleet["nA"]
        entry.info = replace(entry.info, slots=1)  # type: ignore[arg-type]
        attempt = await place(h, a, first)
        h.rec.drain(h.rec.fleet["nA"], True)
        assert h.store.nodes()[0].draining
        h.rec.sessions.on_event("nA", result_event(first.id, attempt, "success"))
        h.step()
        await idle()
        assert (first.status, second.status, len(a.starts)) == ("success", "queued", 1)
        h.rec.drain(h.rec.fleet["nA"], False)
        await place(h, a, second)
        assert second.status == "running"

    h.run(scenario)


def test_a_node_may_ask_for_a_longer_grace_and_a_restart_remembers_it(h: Harness) -> None:
    async def scenario() -> None:
        a = h.node("nA", "node-a")
        beat = heartbeat("nA", "node-a")
        beat = replace(beat, info=replace(beat.info, lost_after_s=120))
        h.rec.sessions.on_event("nA", beat)
        run = make_run()
        h.rec.submit(run)
        await place(h, a, run.jobs[0])
        h.clock.advance(60)
        h.step()
        assert h.rec.fleet["nA"].state == "unreachable"
        h.clock.advance(61)
        h.step()
        assert h.rec.fleet["nA"].state == "lost"
        assert h.store.nodes()[0].lost_after_s == 120

    h.run(scenario)


def test_unknown_late_results_are_ignored(h: Harness) -> None:
    h.node("nA", "node-a")
    for attempt_id in ("nothing", "r9.1.a1", "r000001.1.a7"):
        h.rec.sessions.on_event("nA", result_event("x", attempt_id, "success"))
    assert h.rec.attempts == {}
