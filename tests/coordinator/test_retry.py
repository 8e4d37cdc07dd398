"""A user's retry (`flota retry`) through the Service and a real Reconciler over a real
Store, with fake node links (tests/coordinator/fakes.py): the job is queued again, its
earlier attempts kept, the run running again until the new attempt ends; the store is
written first, so a failed write changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.errors import InvalidRequest, NotFound, StoreError
from coordinator.models import Job, Repo
from coordinator.pki import CertificateAuthority
from coordinator.service import Service
from tests.coordinator.fakes import FakeLink, Harness, idle, make_run, result_event, started, until

REPO = Repo(url="/srv/remote.git", base_ref="refs/flota/base/r000001", base_commit="a" * 40)


async def _attempt(h: Harness, link: FakeLink, job: Job, status: str, **fields: object) -> None:
    """The loop places the job on the node (unless it has already), which starts its
    latest attempt and reports `status`."""
    if job.status == "queued":
        before = len(link.starts)
        h.step()
        await until(lambda: len(link.starts) > before, "StartJob")
        await idle()
    attempt_id = job.attempts[-1].id
    h.rec.sessions.on_event("nA", started(job.id, attempt_id))
    h.rec.sessions.on_event("nA", result_event(job.id, attempt_id, status, **fields))


def test_a_failed_job_retried_runs_as_attempt_2_and_its_run_ends_again(
    h: Harness, ca: CertificateAuthority
) -> None:
    async def scenario() -> None:
        service = Service(h.rec, ca, h.config)
        link = h.node("nA", "node-a")
        run = make_run(jobs=2, repo=REPO)
        h.rec.submit(run)
        first, second = run.jobs
        await _attempt(h, link, first, "failed", error="exit 1", branch="flota/r000001/1")
        await _attempt(h, link, second, "success", branch="flota/r000001/2")
        assert h.stored_run(run.id).status == "failed" and run.id not in h.rec.runs

        watcher = h.rec.hub.watch(run.id)
        again, retried = service.retry(run.id, failed_only=True)
        assert [j.id for j in retried] == [first.id] and again.status == "running"
        first = again.jobs[0]  # the run had ended: the loop holds the store's copy now
        stored = h.stored(first)
        assert (stored.status, stored.result, stored.branch, stored.budget_from) == ("queued", None, "", 1)
        assert [a.status for a in stored.attempts] == ["failed"]  # the history is kept
        assert h.stored_run(run.id).status == "running" and run.id in h.rec.runs
        assert h.stored(second).status == "success"  # --failed: the success is left alone
        event = watcher.queue.get_nowait()
        assert (event.job.id, event.job.status) == (first.id, "queued")

        await _attempt(h, link, first, "success", branch="flota/r000001/1-a2")
        assert link.starts[-1].attempt_id == f"{first.id}.a2"
        assert link.starts[-1].branch == "flota/r000001/1-a2"  # its own branch, as after a lost node
        stored = h.stored(first)
        assert (stored.status, stored.branch) == ("success", "flota/r000001/1-a2")
        assert [a.status for a in stored.attempts] == ["failed", "success"]
        assert h.stored_run(run.id).status == "success" and run.id not in h.rec.runs
        events = [watcher.queue.get_nowait() for _ in range(watcher.queue.qsize())]
        assert [e.job.status for e in events if e.WhichOneof("kind") == "job"][-1] == "success"
        assert events[-1].WhichOneof("kind") == "run" and events[-1].run.status == "success"  # ended again

    h.run(scenario)


def test_a_retry_refused_or_not_found_changes_nothing(h: Harness, ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        service = Service(h.rec, ca, h.config)
        h.node("nA", "node-a")
        run = make_run()
        h.rec.submit(run)  # queued
        with pytest.raises(InvalidRequest, match="job r000001.1 is still queued"):
            service.retry(run.jobs[0].id, failed_only=False)
        with pytest.raises(NotFound):
            service.retry("r000001.7", failed_only=False)
        with pytest.raises(NotFound):
            service.retry("r000009", failed_only=False)
        assert h.stored(run.jobs[0]).status == "queued" and run.jobs[0].attempts == []

    h.run(scenario)


def test_a_failed_write_leaves_the_job_and_its_run_as_they_were(h: Harness, ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        service = Service(h.rec, ca, h.config)
        link = h.node("nA", "node-a")
        run = make_run()
        h.rec.submit(run)
        await _attempt(h, link, run.jobs[0], "failed")

        def locked(*args: object) -> None:
            raise StoreError("database error: database is locked")

        h.store.retry = locked  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            service.retry(run.id, failed_only=False)
        del h.store.retry  # back to the real method
        assert run.id not in h.rec.runs and run.jobs[0].id not in h.rec.jobs
        assert h.stored(run.jobs[0]).status == "failed" and h.stored_run(run.id).status == "failed"
        h.step()
        await idle()
        assert len(link.starts) == 1  # nothing was queued

        service.retry(run.id, failed_only=False)  # the write works again: so does the retry
        assert h.stored(run.jobs[0]).status == "queued"

    h.run(scenario)


def test_a_retried_run_resumes_after_a_restart(h: Harness, ca: CertificateAuthority, tmp_path: Path) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run = make_run()
        h.rec.submit(run)
        await _attempt(h, link, run.jobs[0], "failed")
        Service(h.rec, ca, h.config).retry(run.jobs[0].id, failed_only=False)

        restarted = Harness(tmp_path, store=h.store, clock=h.clock)
        await restarted.start()
        restarted.rec.load()
        try:
            job = restarted.rec.jobs[run.jobs[0].id]
            assert (job.status, job.budget_from, [a.number for a in job.attempts]) == ("queued", 1, [1])
            assert run.id in restarted.rec.runs
        finally:
            await restarted.stop()

    h.run(scenario)
