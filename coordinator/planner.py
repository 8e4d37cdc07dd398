"""Between the queue and the scheduler: builds the scheduler's snapshot, runs it, and
keeps each queued job's wait reason up to date.

The scheduler itself is pure (scheduler.schedule); this module holds what makes calling
it cheap on a busy tick: job views built once per job, jobs held back for a moment after
a busy node refused them, and wait reasons refreshed only when they may have changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from coordinator.events import RunHub
from coordinator.fleet import Fleet, node_view
from coordinator.models import Job, JobStatus, JobView, NodeState, Snapshot
from coordinator.scheduler import schedule
from coordinator.store import Store

__all__ = ["EXPLAIN_S", "Planner"]

EXPLAIN_S = 0.25  # wait reasons are brought up to date at most this often while jobs are placed


def job_view(job: Job) -> JobView:
    p = job.placement
    return JobView(
        id=job.id,
        run_id=job.run_id,
        order=job.created_at + job.index * 1e-6,
        cpus=p.cpus,
        memory_mb=p.memory_mb,
        gpus=p.gpus,
        labels=p.labels,
        node=p.node,
        networks=p.networks,
        avoid_networks=p.avoid_networks,
        exclusive=p.exclusive,
        spread=p.spread,
        agent_cli=job.requires,
    )


class Planner:
    def __init__(
        self,
        fleet: Fleet,
        jobs: dict[str, Job],
        store: Store,
        hub: RunHub,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self._fleet = fleet
        self._jobs = jobs  # the reconciler's active jobs, shared
        self._store = store
        self._hub = hub
        self._clock = clock
        self._wall = wall
        self._views: dict[str, JobView] = {}  # a job's wishes never change: one view for its life
        self._held: dict[str, float] = {}  # job id -> not before (a busy node refused it)
        self._explain_at = 0.0

    def hold(self, job_id: str, seconds: float) -> None:
        self._held[job_id] = self._clock() + seconds

    def held(self, job_id: str) -> bool:
        return self._held.get(job_id, 0.0) > self._clock()

    def release(self, job_id: str) -> None:
        self._held.pop(job_id, None)

    def forget(self, job_id: str) -> None:
        self._views.pop(job_id, None)
        self._held.pop(job_id, None)

    def plan(self, now: float) -> list[tuple[str, str]]:
        """(job id, node id) for each placement the scheduler makes now."""
        queued = [
            j for j in self._jobs.values() if j.status == JobStatus.QUEUED and self._held.get(j.id, 0) <= now
        ]
        if not queued:
            return []
        online = [e for e in self._fleet if e.schedulable]
        views = []
        for job in queued:
            view = self._views.get(job.id)
            if view is None:
                view = self._views[job.id] = job_view(job)
            views.append(view)
        snapshot = Snapshot(tuple(node_view(e) for e in online), tuple(views))
        # Saying why every other job waits costs a pass over the whole queue: done when a
        # pass places nothing (something else changed), else at most every EXPLAIN_S.
        explain = now >= self._explain_at
        plan = schedule(snapshot, now, explain)
        if not explain and not plan.placements:
            explain, plan = True, schedule(snapshot, now)
        placements = [(p.job_id, p.node_id) for p in plan.placements]
        if explain:
            self._explain_at = now + EXPLAIN_S
            self._explain(plan.waiting, bool(online))
        return placements

    def _explain(self, waiting: Mapping[str, str], any_online: bool) -> None:
        draining = sorted(e.name for e in self._fleet if e.state == NodeState.ONLINE and e.draining)
        for job_id, reason in waiting.items():
            if draining and not any_online:
                reason = f"every online node is draining ({', '.join(draining)})"
            job = self._jobs[job_id]
            if job.wait_reason != reason:
                job.wait_reason = reason
                job.updated_at = self._wall()
                self._store.save_job(job)
                self._hub.job(job, self._fleet.names)
