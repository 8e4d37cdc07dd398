"""Test doubles for the reconcile loop: a node link that records every call, a clock
that moves only when told, and a harness that wires them into a real Reconciler over a
real Store on a temp file.

Nothing here sleeps: spawned tasks are driven with `until()` (spin the event loop until
a condition holds, failing after a bounded number of spins) and `idle()` (let every
ready task run to its next wait, for asserting that something did NOT happen).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.config import CoordinatorConfig
from coordinator.errors import NodeCallError
from coordinator.models import (
    Attempt,
    Facts,
    Finished,
    Heartbeat,
    Job,
    JobPlacement,
    LogLines,
    NodeInfo,
    NodeJob,
    NodeRecord,
    Result,
    Run,
    Started,
)
from coordinator.reconcile import Reconciler
from coordinator.store import Store
from protos.flota.v1 import node_pb2, types_pb2

__all__ = [
    "T0_MONO",
    "T0_WALL",
    "FakeClock",
    "FakeLink",
    "Harness",
    "idle",
    "make_run",
    "until",
]

T0_MONO = 1000.0
T0_WALL = 1_700_000_000.0
SPINS = 200


class FakeClock:
    """Monotonic and wall time that advance together, only through `advance()`."""

    def __init__(self) -> None:
        self.mono = T0_MONO
        self.wall = T0_WALL

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class FakeLink:
    """Stands in for coordinator.link.NodeLink (the transport under dispatch.py).

    Every call is recorded. Behaviour is set per test:
    - `start_replies`: consumed one per StartJob (a StartJobReply, or an exception to
      raise); when empty, StartJob is accepted.
    - `start_gate`: when set to an Event, StartJob waits for it (a call in flight).
    - `cancel_found` / `cancel_error`: CancelJob's answer.
    - `jobs` / `list_error`: what ListJobs returns.
    - `on_start`, `on_cancel`, `on_ack`: hooks run inside the call, before it returns,
      to observe (or change) the coordinator's state at that instant.
    """

    def __init__(self, address: str = "10.0.0.1:7000") -> None:
        self.connected = True
        self.address = address
        self.last_error = ""
        self.hints: list[tuple[list[str], str]] = []
        self.starts: list[types_pb2.JobSpec] = []
        self.start_replies: list[node_pb2.StartJobReply | Exception] = []
        self.start_gate: asyncio.Event | None = None
        self.cancels: list[tuple[str, str]] = []
        self.cancel_found = False
        self.cancel_error: NodeCallError | None = None
        self.jobs: list[NodeJob] = []
        self.list_error: NodeCallError | None = None
        self.lists = 0
        self.acks: list[list[str]] = []
        self.cleanups: list[str] = []
        self.on_start: Callable[[types_pb2.JobSpec], None] | None = None
        self.on_cancel: Callable[[str, str], None] | None = None
        self.on_ack: Callable[[list[str]], None] | None = None

    def hint(self, addresses: list[str], source: str = "register") -> None:
        self.hints.append((list(addresses), source))

    async def start_job(self, spec: types_pb2.JobSpec) -> node_pb2.StartJobReply:
        copy = types_pb2.JobSpec()
        copy.CopyFrom(spec)
        self.starts.append(copy)
        if self.on_start is not None:
            self.on_start(copy)
        if self.start_gate is not None:
            await self.start_gate.wait()
        reply = self.start_replies.pop(0) if self.start_replies else node_pb2.StartJobReply(accepted=True)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def cancel_job(self, attempt_id: str, reason: str) -> bool:
        self.cancels.append((attempt_id, reason))
        if self.on_cancel is not None:
            self.on_cancel(attempt_id, reason)
        if self.cancel_error is not None:
            raise self.cancel_error
        return self.cancel_found

    async def list_jobs(self) -> list[NodeJob]:
        self.lists += 1
        if self.list_error is not None:
            raise self.list_error
        return list(self.jobs)

    async def ack(self, attempt_ids: list[str]) -> None:
        if self.on_ack is not None:
            self.on_ack(list(attempt_ids))
        self.acks.append(list(attempt_ids))

    async def cleanup(self, run_id: str, refs: bool = False) -> tuple[int, int]:
        self.cleanups.append(run_id)
        return 0, 0

    async def close(self) -> None:
        self.connected = False

    def calls(self) -> dict[str, Any]:
        """Everything the coordinator asked of this node, for one-line assertions."""
        return {
            "starts": [s.attempt_id for s in self.starts],
            "cancels": list(self.cancels),
            "acks": list(self.acks),
        }


async def until(check: Callable[[], Any], what: str = "condition") -> Any:
    """Let spawned tasks run until `check()` is truthy; fail after SPINS loop turns.
    No wall time passes: every fake answers at once, so a few turns always suffice."""
    for _ in range(SPINS):
        result = check()
        if result:
            return result
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def idle(turns: int = 20) -> None:
    """Let every ready task run to its next wait (to assert something did not happen)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def make_run(
    run_id: str = "r000001", jobs: int = 1, placement: JobPlacement | None = None, **job_fields: Any
) -> Run:
    run = Run(run_id, "test run", "running", T0_WALL)
    for index in range(1, jobs + 1):
        run.jobs.append(
            Job(
                id=f"{run_id}.{index}",
                run_id=run_id,
                index=index,
                name=f"job {index}",
                agent="shell",
                command="echo hi",
                status="queued",
                created_at=T0_WALL,
                updated_at=T0_WALL,
                placement=placement or JobPlacement(),
                **job_fields,
            )
        )
    return run


def heartbeat(node_id: str, name: str, slots: int = 2, running: int = 0) -> Heartbeat:
    return Heartbeat(NodeInfo(id=node_id, name=name, slots=slots, running=running, facts=Facts(cpu_count=2)))


def started(job_id: str, attempt_id: str, at: float = 0.0) -> Started:
    return Started(attempt_id, at)


def log_lines(job_id: str, attempt_id: str, lines: list[str]) -> LogLines:
    return LogLines(attempt_id, tuple(lines))


def job_result(job_id: str, attempt_id: str, status: str, **fields: Any) -> Result:
    fields.pop("log_lines", None)
    if "files_modified" in fields:
        fields["files_modified"] = tuple(fields["files_modified"])
    return Result(status=status, **fields)  # type: ignore[arg-type]


def result_event(job_id: str, attempt_id: str, status: str, **fields: Any) -> Finished:
    lines = tuple(fields.get("log_lines", ()))
    return Finished(attempt_id, job_result(job_id, attempt_id, status, **fields), lines)


def node_job(
    job_id: str, attempt_id: str, state: str, result: Result | None = None, log_lines: tuple[str, ...] = ()
) -> NodeJob:
    if state != "finished":
        return NodeJob(attempt_id)
    assert result is not None
    return NodeJob(attempt_id, Finished(attempt_id, result, log_lines))


class Harness:
    """A Reconciler over a real Store on a temp file, a fake clock, and fake links."""

    def __init__(self, tmp_path: Path, store: Store | None = None, clock: FakeClock | None = None) -> None:
        self.tmp_path = tmp_path
        self.clock = clock or FakeClock()
        self.store = store or Store(tmp_path / "state" / "flota.db")
        self.config = CoordinatorConfig(state_dir=tmp_path / "state", admin_dir=tmp_path / "admin")
        # The links the coordinator makes go here: a test may put one in before it is made.
        self.links: dict[str, FakeLink] = {}
        self.rec = Reconciler(
            self.store,
            self.config,
            lambda node_id: self.links.setdefault(node_id, FakeLink()),
            clock=self.clock.monotonic,
            wall=self.clock.time,
        )
        self._done: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def run(self, scenario: Callable[[], Any]) -> None:
        """Run a scenario with this coordinator's background scope open around it."""

        async def drive() -> None:
            await self.start()
            try:
                await scenario()
            finally:
                await self.stop()

        asyncio.run(drive())

    async def start(self) -> None:
        """Open the reconciler's background scope (the task group its calls run in), as
        the coordinator's app does; a restarted coordinator made inside a scenario calls this."""
        ready, self._done = asyncio.Event(), asyncio.Event()
        done = self._done

        async def hold() -> None:
            async with self.rec.background():
                ready.set()
                await done.wait()

        self._task = asyncio.create_task(hold())
        await ready.wait()

    async def stop(self) -> None:
        if self._done is not None and self._task is not None:
            self._done.set()
            await self._task

    def enroll(self, node_id: str, name: str) -> None:
        """The node as the store knows it (what load() reads after a restart)."""
        self.store.enroll_node(NodeRecord(node_id, name, f"fp-{node_id}", T0_WALL))

    def node(self, node_id: str, name: str, slots: int = 2) -> FakeLink:
        """An enrolled node brought online through its first heartbeat, as a session does."""
        self.enroll(node_id, name)
        self.rec.sessions.enrolled(node_id, name, f"fp-{node_id}")
        self.rec.dispatch.link(node_id)
        self.rec.sessions.on_event(node_id, heartbeat(node_id, name, slots))
        assert self.rec.fleet[node_id].state == "online"
        return self.links[node_id]

    def step(self) -> None:
        """One turn of Reconciler.run(): a tick, then the acks it collected."""
        self.rec.tick()
        self.rec.sessions.flush_acks()

    def stored(self, job: Job) -> Job:
        found = self.store.get_job(job.id)
        assert found is not None
        return found

    def stored_run(self, run_id: str) -> Run:
        found = self.store.get_run(run_id)
        assert found is not None
        return found

    def close(self) -> None:
        self.store.close()


def dispatching_attempt(job: Job, node_id: str, status: str = "dispatching") -> Attempt:
    """An attempt as _dispatch makes it (for building a store by hand)."""
    return Attempt(
        id=f"{job.id}.a1",
        job_id=job.id,
        number=1,
        node_id=node_id,
        status=status,
        branch="",
        created_at=T0_WALL,
        started_at=T0_WALL + 1 if status == "running" else 0.0,
    )
