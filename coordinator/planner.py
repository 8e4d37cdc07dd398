"""Between the queue and the scheduler: builds the scheduler's snapshot, runs it, and
keeps each queued job's wait reason up to date.

The scheduler itself is pure (scheduler.schedule); this module holds what makes calling
it cheap on a busy tick: job views built once per job, jobs held back for a moment after
a busy node refused them, and wait reasons refreshed only when they may have changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from coordinator.events import RunHub
from coordinator.fleet import Fleet, NodeEntry, node_view
from coordinator.models import Job, JobStatus, JobView, NodeState, Snapshot
from coordinator.scheduler import schedule
from coordinator.store import Store

__all__ = ["EXPLAIN_S", "Planner", "unavailable_reason"]

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


def unavailable_reason(entry: NodeEntry) -> str:
    """Why a known node that is not schedulable takes no work: a job pinned to it says so."""
    name = entry.name
    if entry.state == NodeState.ONLINE:
        if entry.draining:
            return f"node {name!r} is draining (flota node drain {name} --undo)"
        if entry.leaving:
            return f"node {name!r} is shutting down"
        return f"node {name!r} has not sent its facts yet"
    state = "not connected yet" if entry.state == NodeState.UNKNOWN else entry.state.value
    return f"node {name!r} is {state}" + (" (and draining)" if entry.draining else "")


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
        unavailable = self.unavailable() if explain else {}
        plan = schedule(replace(snapshot, unavailable=unavailable), now, explain)
        if not explain and not plan.placements:
            unavailable = self.unavailable()
            explain, plan = True, schedule(replace(snapshot, unavailable=unavailable), now)
        placements = [(p.job_id, p.node_id) for p in plan.placements]
        if explain:
            self._explain_at = now + EXPLAIN_S
            self._explain(plan.waiting, bool(online), unavailable)
        return placements

    def unavailable(self) -> dict[str, str]:
        """Why each known node that is not schedulable takes no work, by id and by name."""
        found: dict[str, str] = {}
        for entry in self._fleet:
            if entry.removed or entry.schedulable:
                continue
            found[entry.id] = found[entry.name] = unavailable_reason(entry)
        return found

    def explain_new(self, jobs: Sequence[Job]) -> None:
        """Set, before `jobs` are stored, why each cannot start now, from one pass over the
        nodes as they are (the queue ahead of them aside): the submit's reply then says
        so, e.g. that no current node has the cpus a job asks for. Jobs stay queued: a
        node may join. A job that would fit keeps its "waiting for a node"."""
        online = [e for e in self._fleet if e.schedulable]
        unavailable = self.unavailable()
        snapshot = Snapshot(
            tuple(node_view(e) for e in online), tuple(job_view(j) for j in jobs), unavailable
        )
        waiting = schedule(snapshot, self._clock()).waiting
        draining = self._draining()
        for job in jobs:
            if job.id in waiting:
                job.wait_reason = self._reason(job, waiting[job.id], draining, bool(online), unavailable)

    def _draining(self) -> list[str]:
        return sorted(e.name for e in self._fleet if e.state == NodeState.ONLINE and e.draining)

    @staticmethod
    def _reason(
        job: Job, reason: str, draining: list[str], any_online: bool, unavailable: Mapping[str, str]
    ) -> str:
        if draining and not any_online and job.placement.node not in unavailable:
            return f"every online node is draining ({', '.join(draining)})"
        return reason

    def _explain(self, waiting: Mapping[str, str], any_online: bool, unavailable: Mapping[str, str]) -> None:
        draining = self._draining()
        for job_id, reason in waiting.items():
            job = self._jobs[job_id]
            reason = self._reason(job, reason, draining, any_online, unavailable)
            if job.wait_reason != reason:
                job.wait_reason = reason
                job.updated_at = self._wall()
                self._store.save_job(job)
                self._hub.job(job, self._fleet.names)
