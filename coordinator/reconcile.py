"""The reconcile loop: turns scheduler plans, node events and requests into effects.

Decisions are made elsewhere: placements by `scheduler.schedule`, what an attempt's end
does to its job by `outcomes`. This module persists each decision (store first, then
memory, so a failed write changes nothing and needs no undoing) and performs its
effects: node calls through `dispatch`, events to watchers through `events`.

Everything runs on one asyncio loop, so the in-memory view (active runs, jobs, attempts,
the fleet) needs no locks. Background calls run in the task group of `background()`,
which the coordinator's app owns: closing it ends every call still out.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import fields, replace
from typing import Any

from coordinator import outcomes
from coordinator.config import CoordinatorConfig
from coordinator.convert import spec_to_pb
from coordinator.dispatch import Dispatcher, LinkFactory
from coordinator.errors import MissingSecret
from coordinator.events import RunHub
from coordinator.fleet import Fleet, NodeEntry, liveness
from coordinator.logs import LogBook
from coordinator.models import (
    ATTEMPT_ACTIVE,
    JOB_FINAL,
    Attempt,
    AttemptStatus,
    Cause,
    Finished,
    Job,
    JobStatus,
    NodeState,
    Result,
    ResultStatus,
    Run,
    RunStatus,
    run_status,
)
from coordinator.planner import Planner
from coordinator.secrets import Keyring
from coordinator.sessions import NodeSessions
from coordinator.store import Store

__all__ = ["Reconciler", "branch_for", "new_run_id"]

log = logging.getLogger("flota.coordinator")

TICK_S = 0.5


def _fields(
    change: outcomes.AttemptEnd | outcomes.JobChange | outcomes.Retried | outcomes.Released,
) -> dict[str, Any]:
    """A change record's fields (outcomes.AttemptEnd, JobChange, Retried, Released) by name."""
    return {f.name: getattr(change, f.name) for f in fields(change)}


def _set(target: object, changes: dict[str, Any]) -> None:
    for name, value in changes.items():
        setattr(target, name, value)


class _Closing(Exception):
    """Raised inside background() to end its task group (and so every call in it)."""


def new_run_id(exists: Callable[[str], bool]) -> str:
    while True:
        run_id = "r" + secrets.token_hex(3)
        if not exists(run_id):
            return run_id


def branch_for(job: Job, number: int) -> str:
    base = f"flota/{job.run_id}/{job.index}"
    return base if number == 1 else f"{base}-a{number}"


class Reconciler:
    def __init__(
        self,
        store: Store,
        config: CoordinatorConfig,
        make_link: LinkFactory,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        keyring: Keyring | None = None,
    ) -> None:
        self.store = store
        self.keyring = keyring or Keyring(config.state_dir / "secrets")
        self.config = config
        self.clock = clock
        self.wall = wall
        self.hub = RunHub(wall)
        self.fleet = Fleet()
        self.dispatch = Dispatcher(make_link)
        self.logs = LogBook(store, self.keyring, self.hub)
        self.runs: dict[str, Run] = {}  # active runs only
        self.jobs: dict[str, Job] = {}  # jobs of active runs
        self.attempts: dict[str, tuple[Job, Attempt]] = {}  # active attempts
        self.sessions = NodeSessions(self)
        self.planner = Planner(self.fleet, self.jobs, self.store, self.hub, clock, wall)
        self._wake = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._unwritten: set[str] = set()  # ended runs whose end the store has not taken yet

    # --- start-up and shutdown ------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the in-memory view from the store (a restart resumes every run)."""
        for rec in self.store.nodes():
            if not rec.removed:
                # Silence is counted from now: a node that never comes back is lost in time.
                entry = self.fleet.add(rec.id, rec.name)
                entry.last_seen, entry.fingerprint = self.clock(), rec.fingerprint
                entry.draining = rec.draining
                entry.unreachable_after_s, entry.lost_after_s = rec.unreachable_after_s, rec.lost_after_s
                if rec.address:
                    self.dispatch.link(rec.id).hint([rec.address], "store")
        for node_id, address in self.config.static_nodes:
            if node_id in self.fleet:
                self.dispatch.link(node_id).hint([address], "static")
        for run in self.store.active_runs():
            self.runs[run.id] = run
            for job in run.jobs:
                self.jobs[job.id] = job
                for attempt in job.attempts:
                    if attempt.status in ATTEMPT_ACTIVE:
                        self.attempts[attempt.id] = (job, attempt)
                        self.fleet.reserve(attempt.node_id, attempt.id, job)
        for run_id in list(self.runs):
            self._stop_if_spent(self.runs[run_id])  # a crash between a job's end and the stop
            self._maybe_finish_run(run_id)  # or its run's
        if self.runs:
            log.info("resumed %d runs, %d active attempts", len(self.runs), len(self.attempts))

    @asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        """The scope of every background call (dispatches, cancels, acks, reconciles).
        Leaving it cancels what is still out and waits for it; what those calls would have
        recorded is found again from the store and the nodes at the next start."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                try:
                    yield
                finally:
                    self._group = None
                raise _Closing
        except* _Closing:
            pass

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._group is None:
            coro.close()
            log.warning("a background call was dropped: the coordinator is stopping")
            return
        task = self._group.create_task(self._guarded(coro))
        # A task cancelled before it ran never awaited `coro`: closing it says so quietly.
        task.add_done_callback(lambda _: coro.close())

    @staticmethod
    async def _guarded(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:  # one failed call must not end the group, and so the coordinator
            log.exception("background task failed")

    def wake(self) -> None:
        self._wake.set()

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                self.tick()
            except Exception:  # the loop must outlive one bad tick
                log.exception("reconcile tick failed")
            self.sessions.flush_acks()

    def tick(self) -> None:
        now = self.clock()
        for entry in self.fleet:
            state = liveness(
                entry,
                now,
                entry.unreachable_after_s or self.config.unreachable_after_s,
                entry.lost_after_s or self.config.lost_after_s,
            )
            if state != entry.state:
                self.set_state(entry, state)
            elif state == NodeState.LOST and entry.reservations:
                self._give_up(entry, "was lost")  # what a failed write left behind last time
        for run_id in list(self._unwritten):
            self._maybe_finish_run(run_id)  # normally done at once; this retries a failed write
        for job_id, node_id in self.planner.plan(now):
            self._dispatch(self.jobs[job_id], self.fleet[node_id])

    def set_state(self, entry: NodeEntry, state: NodeState) -> None:
        log.info("node %s (%s): %s -> %s", entry.name, entry.id, entry.state, state)
        entry.state = state
        if state == NodeState.LOST:
            self._give_up(entry, "was lost")
        if state == NodeState.ONLINE:
            self.wake()

    def _give_up(self, entry: NodeEntry, why: str) -> None:
        """End every attempt a node holds, so its jobs can be retried elsewhere."""
        for attempt_id in list(entry.reservations):
            if attempt_id in self.attempts:
                job, attempt = self.attempts[attempt_id]
                result = Result(status=ResultStatus.LOST, node_id=entry.id, error=f"node {entry.name} {why}")
                self.end(job, attempt, result, Cause.LOST)
            else:
                entry.reservations.pop(attempt_id, None)

    # --- dispatch -------------------------------------------------------------------------

    def _dispatch(self, job: Job, entry: NodeEntry) -> None:
        number = len(job.attempts) + 1
        now = self.wall()
        attempt = Attempt(
            id=f"{job.id}.a{number}",
            job_id=job.id,
            number=number,
            node_id=entry.id,
            status=AttemptStatus.DISPATCHING,
            branch=branch_for(job, number) if job.repo else "",
            created_at=now,
        )
        placed: dict[str, Any] = {
            "status": JobStatus.DISPATCHING,
            "node_id": entry.id,
            "wait_reason": "",
            "updated_at": now,
        }
        self.store.add_attempt(replace(job, **placed), attempt)  # persisted before the node hears of it
        job.attempts.append(attempt)
        _set(job, placed)
        self.attempts[attempt.id] = (job, attempt)
        self.fleet.reserve(entry.id, attempt.id, job)
        self.hub.job(job, self.fleet.names)
        self.spawn(self.send(job, attempt))

    def _secrets_for(self, job: Job) -> dict[str, str]:
        if not job.secrets:
            return {}
        values = self.keyring.values(job.secrets)
        missing = [n for n in job.secrets if n not in values]
        if missing:
            raise MissingSecret(
                f"secret {missing[0]} is not set on the coordinator (flota secret set {missing[0]})"
            )
        self.logs.sent(job, values)
        return values

    async def send(self, job: Job, attempt: Attempt) -> None:
        try:
            values = self._secrets_for(job)
        except MissingSecret as exc:
            result = Result(status=ResultStatus.FAILED, error=str(exc), node_id=attempt.node_id)
            self.end(job, attempt, result, Cause.REJECTED)
            return
        resume = [a.branch for a in reversed(job.attempts) if a is not attempt and a.branch]
        spec = spec_to_pb(job, attempt, values, resume if job.repo and job.resume_from_partial else [])
        outcome = await self.dispatch.start(attempt.node_id, spec)
        if outcome.accepted:
            # A cancel raced this start, or the attempt ended meanwhile (lost, resent):
            # either way the node must not run it.
            if job.cancel_requested or attempt.status not in ATTEMPT_ACTIVE:
                await self.dispatch.cancel(attempt.node_id, attempt.id, "cancelled by the user")
            return
        if attempt.status != AttemptStatus.DISPATCHING:
            return  # a result or a start raced ahead of the reply
        if outcome.cause == Cause.REFUSED:
            self.planner.hold(job.id, 1.0)
        elif outcome.cause == Cause.DISPATCH:
            log.warning("attempt %s: %s", attempt.id, outcome.error)
        result = Result(status=ResultStatus.FAILED, error=outcome.error, node_id=attempt.node_id)
        self.end(job, attempt, result, outcome.cause)

    async def cancel_quietly(self, node_id: str, attempt_id: str) -> None:
        await self.dispatch.cancel(node_id, attempt_id, "the coordinator gave up on this attempt")

    # --- outcomes -------------------------------------------------------------------------

    def end(self, job: Job, attempt: Attempt, result: Result, cause: Cause = Cause.NODE) -> None:
        """An attempt ended: decide (outcomes), persist, then change memory and act."""
        result = self.logs.scrub(job, outcomes.checked(result))
        self._apply(job, attempt, outcomes.ended(job, attempt, result, self.wall(), cause))

    def persist(
        self,
        job: Job,
        job_changes: dict[str, Any],
        attempt: Attempt | None = None,
        attempt_changes: dict[str, Any] | None = None,
        result: Result | None = None,
    ) -> None:
        """Write the changes to the store, then make them in memory. If the write fails,
        nothing changed and nothing needs undoing: the attempt stays active and is ended
        again when the node reports next (or is found lost on a later tick)."""
        after = replace(job, **job_changes)
        if attempt is None:
            self.store.save_job(after)
        else:
            self.store.save_attempt(after, replace(attempt, **(attempt_changes or {})), result)
            _set(attempt, attempt_changes or {})
        _set(job, job_changes)

    def _apply(self, job: Job, attempt: Attempt, d: outcomes.Decision) -> None:
        self.persist(job, _fields(d.job) if d.job else {}, attempt, _fields(d.end), d.result)
        self.attempts.pop(attempt.id, None)
        self.logs.attempt_done(attempt.id)
        self.fleet.release(attempt.node_id, attempt.id)
        if d.late:
            log.info("late result for %s: %s (job %s is %s)", attempt.id, attempt.status, job.id, job.status)
        if d.requeue:
            self.wake()
        elif job.status in JOB_FINAL:
            self.planner.release(job.id)
        for other in d.cancel:
            node_id = next(a.node_id for a in job.attempts if a.id == other)
            self.spawn(self.cancel_quietly(node_id, other))
        self.hub.job(job, self.fleet.names)
        if job.run_id in self.runs:
            self.runs[job.run_id].spent_usd += d.result.cost_usd
            self._stop_if_spent(self.runs[job.run_id])
            self._maybe_finish_run(job.run_id)
        elif d.run_changed:
            run = self.store.get_run(job.run_id)
            if run is not None:
                self.store.finish_run_again(run.id, run_status([j.status for j in run.jobs]))

    def late_result(self, node_id: str, event: Finished) -> None:
        """A result for an attempt this coordinator already closed itself: the node was
        lost or unreachable, a start seemed to fail, or the coordinator restarted. It is
        recorded, never dropped: its branch is on the remote either way."""
        job_id, sep, _ = event.attempt_id.rpartition(".a")
        job = self.jobs.get(job_id) if sep else None
        if job is None and sep:
            job = self.store.get_job(job_id)
        attempt = next((a for a in job.attempts if a.id == event.attempt_id), None) if job else None
        if job is None or attempt is None or attempt.node_id != node_id:
            return  # not ours, or not that node's to report
        if not attempt.cause.closed_here:
            return  # already has the node's own result: a repeat delivery
        if event.log_lines:
            self.logs.append_late(job, attempt.id, event.log_lines)
        result = self.logs.scrub(job, outcomes.checked(event.result))
        self._apply(job, attempt, outcomes.late(job, attempt, result, self.wall()))

    def _stop_if_spent(self, run: Run) -> None:
        """A run whose budget its ended attempts have spent starts nothing more (outcomes)."""
        why = outcomes.budget_spent(run.budget_usd, run.spent_usd)
        queued = [j for j in run.jobs if j.status == JobStatus.QUEUED] if why else []
        if not queued:
            return
        stop = [(j, _fields(outcomes.not_started(j, why, self.wall()))) for j in queued]
        self.store.stop_jobs(run.id, why, [replace(job, **c) for job, c in stop])
        run.reason = why
        for job, c in stop:
            _set(job, c)
            self.planner.release(job.id)
            self.hub.job(job, self.fleet.names)

    def _maybe_finish_run(self, run_id: str) -> None:
        """A job of the run changed: release the jobs waiting on it, then end the run if
        every job has ended."""
        run = self.runs.get(run_id)
        if run is None:
            return
        self._release(run)
        status = run_status([j.status for j in run.jobs])
        if status == "running":
            return
        run.status, run.finished_at = status, self.wall()
        self._unwritten.add(run.id)
        self.store.finish_run(run.id, status, run.finished_at)
        self._unwritten.discard(run.id)
        for job in run.jobs:
            self.jobs.pop(job.id, None)
            self.logs.job_done(job.id)
            self.planner.forget(job.id)
        del self.runs[run_id]
        self.hub.run_ended(run, self.fleet.names)

    def _release(self, run: Run) -> None:
        """Waiting jobs whose dependencies moved (outcomes.released): each stored, then
        changed; a crash between two is made good by the same pass at the next start."""
        for change in outcomes.released(run.jobs, self.wall()):
            job = self.jobs[change.job_id]
            self.persist(job, {k: v for k, v in _fields(change).items() if k != "job_id"})
            self.hub.job(job, self.fleet.names)
            if job.status == JobStatus.QUEUED:
                self.wake()

    # --- requests (from the service) ------------------------------------------------------

    def submit(self, run: Run) -> None:
        self.store.create_run(run)
        self.runs[run.id] = run
        for job in run.jobs:
            self.jobs[job.id] = job
        self.hub.run_created(run, self.fleet.names)
        self._release(run)  # the jobs of a graph say which of their dependencies they wait on
        self.wake()

    async def cancel(self, jobs: list[Job]) -> list[str]:
        """Cancel jobs: queued ones at once; running ones by telling their nodes, whose
        result then says cancelled. Attempts on nodes that cannot be told end now."""
        cancelled, calls = [], []
        for job in jobs:
            job = self.jobs.get(job.id, job)
            if job.status in JOB_FINAL:
                continue
            active = [a for a in job.attempts if a.status in ATTEMPT_ACTIVE]
            if not active:
                result = Result(status=ResultStatus.CANCELLED, error="cancelled before it started")
                ended = {"status": JobStatus.CANCELLED, "result": result, "updated_at": self.wall()}
                self.persist(job, {"cancel_requested": True, **ended})
                self.planner.release(job.id)
                self.hub.job(job, self.fleet.names)
            else:
                self.persist(job, {"cancel_requested": True})
                self.planner.release(job.id)
                calls += [self._cancel_attempt(job, a) for a in active]
            cancelled.append(job.id)
        for run_id in {j.run_id for j in jobs}:  # after all: a job cancelled here is not a failed dependency
            self._maybe_finish_run(run_id)
        await asyncio.gather(*calls)
        return cancelled

    def current_run(self, run_id: str) -> Run | None:
        """The run as the loop has it: an active one, or the store's copy of an ended one,
        whose jobs that still have an attempt out (being stopped) are the ones memory holds."""
        run = self.runs.get(run_id)
        if run is not None:
            return run
        run = self.store.get_run(run_id)
        if run is not None:
            held = {job.id: job for job, _ in self.attempts.values() if job.run_id == run_id}
            run.jobs = [held.get(j.id, j) for j in run.jobs]
        return run

    def retry(self, run: Run, jobs: list[Job]) -> None:
        """Queue ended jobs of `run` again (a user's retry, `outcomes.to_retry` chose them):
        the jobs and their run, running again, are stored in one transaction, then memory
        changes; a run that had ended is active again and ends again when its jobs do."""
        now = self.wall()
        changes = [(job, _fields(outcomes.retried(job, now))) for job in jobs]
        self.store.retry(run.id, [replace(job, **c) for job, c in changes])
        if self.runs.get(run.id) is not run:  # it had ended: `run` is from current_run()
            self.runs[run.id] = run
            for job in run.jobs:
                self.jobs[job.id] = job
        run.status, run.finished_at = RunStatus.RUNNING, 0.0
        self._unwritten.discard(run.id)  # an end the store never took is moot now
        self.hub.run_updated(run)
        for job, c in changes:
            _set(job, c)
            self.planner.forget(job.id)
            self.hub.job(job, self.fleet.names)
        log.info("run %s: %d jobs queued again by the user", run.id, len(jobs))
        self._release(run)  # a retried job of a graph whose dependencies have succeeded
        self.wake()

    async def _cancel_attempt(self, job: Job, attempt: Attempt) -> None:
        if self.dispatch.connected(attempt.node_id):
            await self.dispatch.cancel(attempt.node_id, attempt.id, "cancelled by the user")
            if self.dispatch.connected(attempt.node_id):
                # Told, or not found yet: a start still on its way is cancelled when it is
                # accepted, and a result on its way is recorded as it arrives.
                return
        if attempt.status in ATTEMPT_ACTIVE:
            result = Result(
                ResultStatus.CANCELLED, node_id=attempt.node_id, error="cancelled (node unreachable)"
            )
            self.end(job, attempt, result, Cause.UNREACHABLE)

    def drain(self, entry: NodeEntry, draining: bool) -> None:
        self.store.set_draining(entry.id, draining)
        entry.draining = draining
        log.info("node %s: %s", entry.name, "draining" if draining else "eligible again")
        self.wake()

    async def remove(self, entry: NodeEntry) -> list[str]:
        """Revoke a node: refuse its certificate, stop dialing it, give up its attempts."""
        self.store.remove_node(entry.id)
        entry.removed, entry.fingerprint = True, ""
        given_up = [a for a in entry.reservations if a in self.attempts]
        # A last word: stop what runs there (nothing is sent when it is not connected).
        await asyncio.gather(*(self.cancel_quietly(entry.id, a) for a in given_up))
        self._give_up(entry, "was removed")
        entry.reservations.clear()
        self.set_state(entry, NodeState.OFFLINE)
        await self.dispatch.drop(entry.id)
        log.warning("node %s (%s) removed: its certificate is refused from now on", entry.name, entry.id)
        return given_up
