"""Live updates for watchers of a run (WatchRun), of a job's log (StreamLogs), and for the
fleet's event stream (`stream`, StreamEvents): every change of a run or job passes here."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

from coordinator.convert import job_to_pb, run_to_pb
from coordinator.models import Job, Run
from coordinator.stream import EventLog
from protos.flota.v1 import coordinator_pb2

__all__ = ["RunHub", "Watcher"]

QUEUE_LIMIT = 20_000


class Watcher:
    """One WatchRun stream's queue. A watcher that falls QUEUE_LIMIT events behind is
    marked overflowed and its stream ends; the client watches again from a fresh read."""

    def __init__(self, logs: bool) -> None:
        self.logs = logs
        self.queue: asyncio.Queue[coordinator_pb2.RunEvent] = asyncio.Queue()
        self.overflowed = False


class RunHub:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._runs: dict[str, set[Watcher]] = defaultdict(set)
        self._logs: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.stream = EventLog(wall)

    def watch(self, run_id: str, logs: bool = False) -> Watcher:
        watcher = Watcher(logs)
        self._runs[run_id].add(watcher)
        return watcher

    def unwatch(self, run_id: str, watcher: Watcher) -> None:
        watchers = self._runs.get(run_id)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._runs[run_id]

    def _put(self, run_id: str, event: coordinator_pb2.RunEvent, log: bool = False) -> None:
        for watcher in self._runs.get(run_id, ()):
            if log and not watcher.logs:
                continue
            if watcher.queue.qsize() >= QUEUE_LIMIT:
                watcher.overflowed = True
                continue
            watcher.queue.put_nowait(event)

    def job(self, job: Job, names: Callable[[], dict[str, str]]) -> None:
        built: list[coordinator_pb2.Job] = []  # built once, only for someone who may read it

        def message() -> coordinator_pb2.Job:
            if not built:
                built.append(job_to_pb(job, names()))
            return built[0]

        if job.run_id in self._runs:
            self._put(job.run_id, coordinator_pb2.RunEvent(job=message()))
        self.stream.publish(f"job.{job.status}", lambda: coordinator_pb2.Event(job=message()))

    def run_created(self, run: Run, names: Callable[[], dict[str, str]]) -> None:
        self.stream.publish("run.created", lambda: coordinator_pb2.Event(run=run_to_pb(run, {}, False)))
        for job in run.jobs:
            self.job(job, names)

    def run_updated(self, run: Run) -> None:
        """A run that had ended is running again (a user's retry)."""
        self.stream.publish("run.updated", lambda: coordinator_pb2.Event(run=run_to_pb(run, {}, False)))

    def run_removed(self, run: Run) -> None:
        """An ended run was forgotten (`flota prune`): its jobs with it."""
        self.stream.publish("run.removed", lambda: coordinator_pb2.Event(run=run_to_pb(run, {}, False)))

    def log(self, job_id: str, attempt_id: str, lines: list[str]) -> None:
        run_id = job_id.partition(".")[0]
        if any(w.logs for w in self._runs.get(run_id, ())):
            chunk = coordinator_pb2.LogChunk(job_id=job_id, attempt_id=attempt_id, lines=lines)
            self._put(run_id, coordinator_pb2.RunEvent(log=chunk), log=True)
        for waiter in self._logs.get(job_id, ()):
            waiter.set()

    def run_ended(self, run: Run, names: Callable[[], dict[str, str]]) -> None:
        if run.id in self._runs:
            self._put(run.id, coordinator_pb2.RunEvent(run=run_to_pb(run, names())))
        self.stream.publish("run.ended", lambda: coordinator_pb2.Event(run=run_to_pb(run, {}, False)))
        for job in run.jobs:
            for waiter in self._logs.get(job.id, ()):
                waiter.set()

    def log_waiter(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._logs[job_id].add(event)
        return event

    def drop_log_waiter(self, job_id: str, event: asyncio.Event) -> None:
        waiters = self._logs.get(job_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._logs[job_id]
