"""A run as a graph through the whole Reconciler (a real store, fake node links): only
the jobs whose dependencies have succeeded are placed, each starting from their results,
and a crash between a dependency's end and its dependents' release is made good at the
next start, nothing run twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.models import JobStatus, Repo
from coordinator.store import StoreError
from tests.coordinator.fakes import Harness, idle, make_run, result_event, started, until
from tests.coordinator.test_reconcile import _failing, dispatch

BASE, CODER_HEAD, DOCS_HEAD = "a" * 40, "b" * 40, "c" * 40


def test_dependents_start_from_their_dependencies_results_even_across_a_crash(
    h: Harness, tmp_path: Path
) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a", slots=4)
        run = make_run(jobs=3, repo=Repo("/srv/repo.git", "refs/flota/base/r000001", BASE))
        coder, docs, reviewer = run.jobs
        coder.name, docs.name, reviewer.name = "coder", "docs", "reviewer"
        reviewer.status, reviewer.depends_on = JobStatus.WAITING, (coder.id, docs.id)
        h.rec.submit(run)
        assert reviewer.wait_reason == "waiting on coder, docs"
        await dispatch(h, link, 2)
        h.step()
        await idle()
        assert sorted(s.job_id for s in link.starts) == [coder.id, docs.id]  # not the reviewer
        for job, head in ((docs, DOCS_HEAD), (coder, CODER_HEAD)):
            attempt = job.attempts[0]
            h.rec.sessions.on_event("nA", started(job.id, attempt.id))
            end = result_event(
                job.id, attempt.id, "success", branch=f"flota/{run.id}/{job.index}", head_commit=head
            )
            if job is docs:
                h.rec.sessions.on_event("nA", end)
                continue
            # The process dies after the coder's end is stored, before its dependents' release.
            h.store.save_job = _failing("the process died here")  # type: ignore[method-assign]
            with pytest.raises(StoreError):
                h.rec.sessions.on_event("nA", end)
            del h.store.save_job
        assert reviewer.wait_reason == "waiting on coder"
        assert h.stored(coder).status == "success" and h.stored(reviewer).status == "waiting"

        restarted = Harness(tmp_path, store=h.store, clock=h.clock)
        await restarted.start()
        restarted.rec.load()
        again = restarted.node("nA", "node-a", slots=4)
        assert restarted.stored(reviewer).status == "queued"
        await dispatch(restarted, again)
        (spec,) = again.starts
        assert spec.job_id == reviewer.id
        assert (spec.repo.base_ref, spec.repo.base_commit) == (f"refs/heads/flota/{run.id}/1", CODER_HEAD)
        assert [(m.base_ref, m.base_commit) for m in spec.merges] == [
            (f"refs/heads/flota/{run.id}/2", DOCS_HEAD)
        ]
        restarted.step()
        await idle()
        assert len(again.starts) == 1  # nothing else ran again
        await until(lambda: restarted.stored(reviewer).status == "dispatching", "the reviewer stored placed")
        await restarted.stop()

    h.run(scenario)
