"""coordinator/reconcile.py: the Reconciler driven through its seams.

Every scenario runs a real Reconciler over a real Store (a temp SQLite file), with
fake node links (tests/coordinator/fakes.py) and a fake clock. Each asserts the final
state in memory and in the store, and what the fake node was asked. Nothing sleeps:
spawned tasks are driven with `until()` / `idle()`, time moves with `clock.advance()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from coordinator.errors import NodeCallError
from coordinator.fleet import GOODBYE_WINDOW_S
from coordinator.logs import LOG_LINES_MAX
from coordinator.models import Job, JobPlacement, Repo, Run
from coordinator.outcomes import MAX_DISPATCH_FAILURES
from coordinator.store import StoreError
from protos.flota.v1 import node_pb2
from tests.coordinator.fakes import (
    T0_WALL,
    FakeLink,
    Harness,
    dispatching_attempt,
    heartbeat,
    idle,
    job_result,
    log_lines,
    make_run,
    node_job,
    result_event,
    started,
    until,
)

BUSY = "no free slot (2 of 2 busy)"
MARKER = f"[flota: log truncated after {LOG_LINES_MAX - 1} lines]"


async def dispatch(h: Harness, link: FakeLink, n: int = 1) -> None:
    """A tick places the queued job; wait until the node has been asked to start it."""
    h.step()
    await until(lambda: len(link.starts) >= n, "StartJob")
    await idle()  # the reply is handled


async def run_on(h: Harness, link: FakeLink, node_id: str = "nA") -> tuple[Run, Job]:
    """Submit a one-job run, dispatch it to the only node, and report it started."""
    run = make_run()
    h.rec.submit(run)
    job = run.jobs[0]
    await dispatch(h, link)
    attempt = job.attempts[0]
    h.rec.sessions.on_event(node_id, started(job.id, attempt.id, T0_WALL + 1))
    assert (job.status, attempt.status) == ("running", "running")
    return run, job


# --- 1. dispatch --------------------------------------------------------------------------


def test_dispatch_persists_before_start_then_records_start_result_and_acks_after_persisting(
    h: Harness,
) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run = make_run(repo=Repo("file:///srv/remote.git", "refs/flota/base/r000001", "b" * 40))
        h.rec.submit(run)
        job = run.jobs[0]
        seen_at_start: list[tuple[str, list[tuple[str, str]]]] = []
        link.on_start = lambda spec: seen_at_start.append(
            (h.stored(job).status, [(a.id, a.status) for a in h.stored(job).attempts])
        )
        seen_at_ack: list[tuple[str, str, str | None]] = []

        def on_ack(ids: list[str]) -> None:
            stored = h.stored(job)
            status = stored.result.status if stored.result else None
            seen_at_ack.append((stored.status, stored.attempts[0].status, status))

        link.on_ack = on_ack

        await dispatch(h, link)
        attempt_id = f"{job.id}.a1"
        # Persisted as dispatching before the node heard of it.
        assert seen_at_start == [("dispatching", [(attempt_id, "dispatching")])]
        spec = link.starts[0]
        assert (spec.job_id, spec.run_id, spec.attempt_id, spec.command, spec.branch) == (
            job.id,
            run.id,
            attempt_id,
            "echo hi",
            "flota/r000001/1",
        )
        assert (spec.repo.url, spec.repo.base_commit) == ("file:///srv/remote.git", "b" * 40)
        assert (job.status, job.node_id, [a.status for a in job.attempts]) == (
            "dispatching",
            "nA",
            ["dispatching"],
        )
        assert list(h.rec.fleet["nA"].reservations) == [attempt_id]

        h.rec.sessions.on_event("nA", started(job.id, attempt_id, T0_WALL + 1))
        stored = h.stored(job)
        assert (job.status, job.attempts[0].status) == ("running", "running")
        assert (stored.status, stored.attempts[0].status, stored.attempts[0].started_at) == (
            "running",
            "running",
            T0_WALL + 1,
        )

        h.rec.sessions.on_event(
            "nA",
            result_event(
                job.id, attempt_id, "success", branch="flota/r000001/1", head_commit="c" * 40, exit_code=0
            ),
        )
        assert link.acks == []  # acks go out with the loop's next turn, after persisting
        h.step()
        await until(lambda: link.acks, "ack")

        assert link.acks == [[attempt_id]]
        assert seen_at_ack == [("success", "success", "success")]
        # Memory.
        assert (job.status, job.branch, job.result and job.result.status) == (
            "success",
            "flota/r000001/1",
            "success",
        )
        assert job.attempts[0].status == "success"
        assert run.status == "success"
        assert h.rec.runs == {} and h.rec.jobs == {} and h.rec.attempts == {}
        assert h.rec.fleet["nA"].reservations == {}
        # Store.
        stored = h.stored(job)
        assert (stored.status, stored.branch, stored.attempts[0].status) == (
            "success",
            "flota/r000001/1",
            "success",
        )
        assert stored.result is not None and stored.result.head_commit == "c" * 40
        assert h.stored_run(run.id).status == "success"
        assert link.calls() == {"starts": [attempt_id], "cancels": [], "acks": [[attempt_id]]}

    h.run(scenario)


# --- 2. cancel while StartJob is in flight -------------------------------------------------


@pytest.mark.parametrize(
    ("node_reports", "job_ends", "run_ends"),
    [
        ("cancelled", "cancelled", "cancelled"),
        ("failed", "cancelled", "cancelled"),  # a cancelled job's failure is its cancel
        # The work finished and its branch exists: a success outlives the cancel request.
        ("success", "success", "success"),
    ],
)
def test_cancel_during_start_is_repeated_once_the_start_is_accepted(
    h: Harness, node_reports: str, job_ends: str, run_ends: str
) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        link.start_gate = asyncio.Event()
        link.cancel_found = False  # the node has not seen the start yet
        run = make_run()
        h.rec.submit(run)
        job = run.jobs[0]
        h.step()
        await until(lambda: link.starts, "StartJob in flight")
        attempt_id = job.attempts[0].id

        assert await h.rec.cancel([job]) == [job.id]
        assert link.cancels == [(attempt_id, "cancelled by the user")]
        # Not found is not the end: the start may still land.
        assert (job.status, job.attempts[0].status, job.cancel_requested) == (
            "dispatching",
            "dispatching",
            True,
        )
        assert h.stored(job).cancel_requested and h.stored(job).status == "dispatching"

        link.start_gate.set()  # StartJob accepted
        await until(lambda: len(link.cancels) == 2, "second CancelJob")
        assert link.cancels == [(attempt_id, "cancelled by the user")] * 2

        h.rec.sessions.on_event("nA", started(job.id, attempt_id))
        h.rec.sessions.on_event(
            "nA", result_event(job.id, attempt_id, node_reports, branch="flota/r000001/1")
        )
        h.step()
        await until(lambda: link.acks, "ack")

        assert (job.status, job.attempts[0].status, run.status) == (job_ends, node_reports, run_ends)
        assert job.result is not None and job.result.status == job_ends
        stored = h.stored(job)
        assert (stored.status, stored.attempts[0].status) == (job_ends, node_reports)
        assert stored.result is not None and stored.result.status == job_ends
        assert h.stored_run(run.id).status == run_ends
        assert link.calls() == {
            "starts": [attempt_id],
            "cancels": [(attempt_id, "cancelled by the user")] * 2,
            "acks": [[attempt_id]],
        }

    h.run(scenario)


# --- 3. a result during CancelJob, then the link drops -------------------------------------


@pytest.mark.parametrize("cancel_fails", [False, True], ids=["not-found", "call-error"])
def test_result_during_cancel_then_link_drop_keeps_the_real_result(h: Harness, cancel_fails: bool) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run, job = await run_on(h, link)
        attempt_id = job.attempts[0].id

        def result_then_drop(aid: str, reason: str) -> None:
            h.rec.sessions.on_event("nA", result_event(job.id, aid, "success", branch="flota/r000001/1"))
            link.connected = False

        link.on_cancel = result_then_drop
        if cancel_fails:
            link.cancel_error = NodeCallError("CancelJob failed: Socket closed", "UNAVAILABLE")

        assert await h.rec.cancel([job]) == [job.id]

        assert (job.status, job.attempts[0].status, job.attempts[0].error) == ("success", "success", "")
        assert job.branch == "flota/r000001/1"
        assert run.status == "success" and h.rec.runs == {}
        stored = h.stored(job)
        assert (stored.status, stored.attempts[0].status, stored.branch) == (
            "success",
            "success",
            "flota/r000001/1",
        )
        assert stored.result is not None and stored.result.status == "success"
        assert h.stored_run(run.id).status == "success"

        # The link is down: the ack waits for the reconnect, where the node lists the
        # result again; it is acked then, and the recorded outcome does not change.
        h.step()
        await idle()
        assert link.acks == []
        await h.rec.sessions.on_link_state("nA", "down", "Socket closed")
        link.connected = True
        link.jobs = [
            node_job(
                job.id,
                attempt_id,
                "finished",
                job_result(job.id, attempt_id, "success", branch="flota/r000001/1"),
            )
        ]
        h.rec.sessions.on_event("nA", heartbeat("nA", "node-a"))
        await h.rec.sessions.on_link_state("nA", "up", "10.0.0.1:7000")
        await until(lambda: link.acks, "ack after reconnect")
        assert link.calls() == {
            "starts": [attempt_id],
            "cancels": [(attempt_id, "cancelled by the user")],
            "acks": [[attempt_id]],
        }
        assert (h.stored(job).status, h.stored_run(run.id).status) == ("success", "success")

    h.run(scenario)


# --- 4. a node speaks only for its own attempts --------------------------------------------


@pytest.mark.parametrize("phase", ["dispatching", "running"])
def test_events_from_a_node_that_does_not_own_the_attempt_are_ignored(h: Harness, phase: str) -> None:
    async def scenario() -> None:
        link_a = h.node("nA", "node-a")
        link_b = h.node("nB", "node-b")
        run = make_run(placement=JobPlacement(node="nA"))
        h.rec.submit(run)
        job = run.jobs[0]
        await dispatch(h, link_a)
        attempt_id = job.attempts[0].id
        assert job.node_id == "nA"
        if phase == "running":
            h.rec.sessions.on_event("nA", started(job.id, attempt_id))
        before = (h.stored(job).status, [(a.status, a.error) for a in h.stored(job).attempts])

        h.rec.sessions.on_event("nB", started(job.id, attempt_id))
        h.rec.sessions.on_event("nB", log_lines(job.id, attempt_id, ["forged line"]))
        h.rec.sessions.on_event(
            "nB", result_event(job.id, attempt_id, "success", branch="flota/evil", head_commit="0" * 40)
        )
        h.step()
        await idle()

        assert (job.status, job.attempts[0].status, job.result, job.branch) == (phase, phase, None, "")
        assert attempt_id in h.rec.attempts and run.id in h.rec.runs
        stored = h.stored(job)
        assert (stored.status, [(a.status, a.error) for a in stored.attempts]) == before
        assert stored.result is None and stored.branch == ""
        assert h.store.logs(job.id) == []
        assert h.stored_run(run.id).status == "running"
        assert link_b.calls() == {"starts": [], "cancels": [], "acks": []}
        assert link_a.calls() == {"starts": [attempt_id], "cancels": [], "acks": []}

    h.run(scenario)


# --- 5. reconciliation after a reconnect ----------------------------------------------------


async def reconnect(h: Harness, link: FakeLink, node_id: str, jobs: list[node_pb2.NodeJob]) -> None:
    """The session breaks, then comes back: first event (a heartbeat), then "up"."""
    link.connected = False
    await h.rec.sessions.on_link_state(node_id, "down", "Socket closed")
    assert h.rec.fleet[node_id].state == "unreachable"
    link.connected = True
    link.jobs = jobs
    h.rec.sessions.on_event(node_id, heartbeat(node_id, h.rec.fleet[node_id].name))
    await h.rec.sessions.on_link_state(node_id, "up", "10.0.0.2:7000")
    assert h.rec.fleet[node_id].state == "online"


def test_reconnect_records_a_result_the_node_kept_and_acks_it(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run, job = await run_on(h, link)
        attempt_id = job.attempts[0].id
        stored_at_ack: list[str] = []
        link.on_ack = lambda ids: stored_at_ack.append(h.stored(job).status)
        kept = job_result(job.id, attempt_id, "failed", exit_code=3, error="exit 3")

        # What it printed while no coordinator listened comes with the result.
        unsent = ("while", "away")
        await reconnect(h, link, "nA", [node_job(job.id, attempt_id, "finished", kept, unsent)])
        await until(lambda: link.acks, "ack")

        assert link.lists == 1
        assert [line for _, _, line in h.store.logs(job.id)] == list(unsent)
        assert stored_at_ack == ["failed"]
        assert (job.status, job.attempts[0].status, run.status) == ("failed", "failed", "failed")
        assert job.result is not None and job.result.exit_code == 3
        stored = h.stored(job)
        assert (stored.status, stored.attempts[0].status, stored.attempts[0].error) == (
            "failed",
            "failed",
            "exit 3",
        )
        assert h.stored_run(run.id).status == "failed"
        assert [n.address for n in h.store.nodes()] == ["10.0.0.2:7000"]
        assert link.calls() == {"starts": [attempt_id], "cancels": [], "acks": [[attempt_id]]}

    h.run(scenario)


def test_reconnect_resends_a_start_the_node_never_got(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        link.start_gate = asyncio.Event()  # the first StartJob is lost in the cut
        run = make_run()
        h.rec.submit(run)
        job = run.jobs[0]
        h.step()
        await until(lambda: link.starts, "StartJob")
        attempt_id = job.attempts[0].id

        await reconnect(h, link, "nA", [])
        await until(lambda: len(link.starts) == 2, "StartJob re-sent")
        link.start_gate.set()
        await idle()

        assert [s.attempt_id for s in link.starts] == [attempt_id, attempt_id]  # same attempt, not a new one
        assert (job.status, [a.status for a in job.attempts]) == ("dispatching", ["dispatching"])
        stored = h.stored(job)
        assert (stored.status, [a.status for a in stored.attempts]) == ("dispatching", ["dispatching"])
        assert list(h.rec.fleet["nA"].reservations) == [attempt_id]

        h.rec.sessions.on_event("nA", started(job.id, attempt_id))
        assert (job.status, h.stored(job).attempts[0].status) == ("running", "running")
        assert link.calls() == {"starts": [attempt_id, attempt_id], "cancels": [], "acks": []}
        assert h.stored_run(run.id).status == "running"

    h.run(scenario)


@pytest.mark.parametrize(
    ("max_attempts", "job_after"),
    [(2, "queued"), (1, "lost")],
    ids=["attempts-left", "no-attempts-left"],
)
def test_reconnect_gives_up_a_running_attempt_the_node_forgot(
    h: Harness, max_attempts: int, job_after: str
) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run = make_run(max_attempts=max_attempts)
        h.rec.submit(run)
        job = run.jobs[0]
        await dispatch(h, link)
        a1 = job.attempts[0].id
        h.rec.sessions.on_event("nA", started(job.id, a1))

        await reconnect(h, link, "nA", [])  # the node restarted without it

        forgot = "the node no longer knows this job"
        assert (job.attempts[0].status, job.attempts[0].error) == ("lost", forgot)
        assert job.status == job_after
        assert h.rec.fleet["nA"].reservations == {}
        stored = h.stored(job)
        assert (stored.status, stored.attempts[0].status, stored.attempts[0].error) == (
            job_after,
            "lost",
            forgot,
        )
        if job_after == "queued":
            assert job.wait_reason == stored.wait_reason == f"retrying: {forgot}"
            assert h.stored_run(run.id).status == "running"
            await dispatch(h, link, 2)  # placed again, as a new attempt
            a2 = f"{job.id}.a2"
            assert [(a.id, a.status) for a in job.attempts] == [(a1, "lost"), (a2, "dispatching")]
            assert [(a.id, a.status) for a in h.stored(job).attempts] == [(a1, "lost"), (a2, "dispatching")]
            assert link.calls()["starts"] == [a1, a2]
        else:
            assert job.result is not None and job.result.error == forgot
            assert run.status == h.stored_run(run.id).status == "failed"
            assert link.calls()["starts"] == [a1]
        assert link.cancels == []

    h.run(scenario)


def test_reconnect_cancels_work_the_coordinator_does_not_track(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run, job = await run_on(h, link)
        ours = job.attempts[0].id
        stray = "rdead00.1.a1"  # e.g. an attempt given up while the node was lost

        await reconnect(
            h, link, "nA", [node_job(job.id, ours, "running"), node_job("rdead00.1", stray, "running")]
        )
        await until(lambda: link.cancels, "CancelJob")
        await idle()

        assert link.calls() == {
            "starts": [ours],
            "cancels": [(stray, "the coordinator gave up on this attempt")],
            "acks": [],
        }
        assert (job.status, job.attempts[0].status) == ("running", "running")
        stored = h.stored(job)
        assert (stored.status, stored.attempts[0].status) == ("running", "running")
        assert h.store.get_job("rdead00.1") is None
        assert h.stored_run(run.id).status == "running"

    h.run(scenario)


# --- 6. liveness on the fake clock -----------------------------------------------------------


def test_liveness_online_unreachable_lost(h: Harness) -> None:
    async def scenario() -> None:
        h.node("nA", "node-a")
        assert (h.config.unreachable_after_s, h.config.lost_after_s) == (3.0, 30.0)
        timeline = [
            (3.0, "online"),
            (3.5, "unreachable"),
            (30.0, "unreachable"),
            (30.5, "lost"),
            (500, "lost"),
        ]
        elapsed = 0.0
        for at, state in timeline:
            h.clock.advance(at - elapsed)
            elapsed = at
            h.step()
            assert h.rec.fleet["nA"].state == state, f"at +{at}s"
        # A heartbeat brings it back.
        h.rec.sessions.on_event("nA", heartbeat("nA", "node-a"))
        h.step()
        assert h.rec.fleet["nA"].state == "online"

    h.run(scenario)


@pytest.mark.parametrize(
    ("max_attempts", "job_after", "run_after"),
    [(2, "queued", "running"), (1, "lost", "failed")],
    ids=["attempts-left", "no-attempts-left"],
)
def test_lost_node_gives_up_its_running_attempt(
    h: Harness, max_attempts: int, job_after: str, run_after: str
) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run = make_run(max_attempts=max_attempts)
        h.rec.submit(run)
        job = run.jobs[0]
        await dispatch(h, link)
        h.rec.sessions.on_event("nA", started(job.id, job.attempts[0].id))

        h.clock.advance(4)
        h.step()
        assert (h.rec.fleet["nA"].state, job.status) == ("unreachable", "running")  # not given up yet
        h.clock.advance(27)
        h.step()

        lost = "node node-a was lost"
        assert h.rec.fleet["nA"].state == "lost"
        assert (job.status, job.attempts[0].status, job.attempts[0].error) == (job_after, "lost", lost)
        assert h.rec.fleet["nA"].reservations == {} and h.rec.attempts == {}
        stored = h.stored(job)
        assert (stored.status, stored.attempts[0].status, stored.attempts[0].error) == (
            job_after,
            "lost",
            lost,
        )
        assert run.status == h.stored_run(run.id).status == run_after
        if job_after == "lost":
            assert job.result is not None and job.result.error == lost
            assert stored.result is not None and stored.result.error == lost
        else:
            # Queued again; with no node online it waits and says why.
            assert job.wait_reason == stored.wait_reason == "no nodes are online"
        assert link.calls()["starts"] == [job.attempts[0].id]

    h.run(scenario)


def test_after_restart_a_silent_node_holding_work_is_lost_and_an_idle_one_stays_unknown(
    h: Harness,
) -> None:
    async def scenario() -> None:
        first = h  # the coordinator before the restart
        first.enroll("nA", "node-a")
        first.enroll("nB", "node-b")
        run = make_run()
        first.store.create_run(run)
        job = run.jobs[0]
        attempt = dispatching_attempt(job, "nA", "running")
        job.attempts.append(attempt)
        job.status, job.node_id = "running", "nA"
        first.store.add_attempt(job, attempt)

        h2 = Harness(first.tmp_path, store=first.store)  # a restarted coordinator
        await h2.start()
        link_a = h2.links["nA"] = FakeLink()
        link_b = h2.links["nB"] = FakeLink()
        h2.rec.load()
        assert {e.id: e.state for e in h2.rec.fleet} == {"nA": "unknown", "nB": "unknown"}
        assert list(h2.rec.fleet["nA"].reservations) == [attempt.id]

        h2.clock.advance(29.5)
        h2.step()
        assert {e.id: e.state for e in h2.rec.fleet} == {"nA": "unknown", "nB": "unknown"}
        h2.clock.advance(1.0)
        h2.step()
        assert {e.id: e.state for e in h2.rec.fleet} == {"nA": "lost", "nB": "unknown"}
        loaded = h2.rec.runs[run.id].jobs[0]
        assert (loaded.status, loaded.attempts[0].status) == ("queued", "lost")
        stored = h2.stored(job)
        assert (stored.status, stored.attempts[0].status, stored.attempts[0].error) == (
            "queued",
            "lost",
            "node node-a was lost",
        )
        h2.clock.advance(3600)
        h2.step()
        assert h2.rec.fleet["nB"].state == "unknown"
        assert link_a.calls() == link_b.calls() == {"starts": [], "cancels": [], "acks": []}

    h.run(scenario)


# --- 7. goodbye -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("with_work", "order", "gap_s", "state_after", "state_later"),
    [
        # A goodbye (forgeable over mDNS) never ends work: the node is lost as if silent.
        (True, "down-goodbye", 0.0, "unreachable", "lost"),
        (False, "down-goodbye", 0.0, "offline", "offline"),
        (False, "goodbye-down", GOODBYE_WINDOW_S - 1, "offline", "offline"),
        (False, "goodbye-down", GOODBYE_WINDOW_S + 1, "unreachable", "lost"),
        (True, "goodbye-down", 1.0, "unreachable", "lost"),
    ],
    ids=[
        "unreachable-with-work",
        "unreachable-idle",
        "online-down-within-window",
        "online-down-after-window",
        "online-with-work-down-within-window",
    ],
)
def test_goodbye(
    h: Harness, with_work: bool, order: str, gap_s: float, state_after: str, state_later: str
) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        entry = h.rec.fleet["nA"]
        job = None
        if with_work:
            _, job = await run_on(h, link)
        if order == "down-goodbye":
            await h.rec.sessions.on_link_state("nA", "down", "Socket closed")
            assert entry.state == "unreachable"
            h.rec.sessions.goodbye("nA")
        else:
            h.rec.sessions.goodbye("nA")
            assert entry.state == "online"  # a goodbye alone never takes an online node down
            h.clock.advance(gap_s)
            await h.rec.sessions.on_link_state("nA", "down", "Socket closed")
        assert entry.state == state_after
        h.clock.advance(h.config.lost_after_s + 1)
        h.step()
        assert entry.state == state_later
        if job is not None:
            assert (job.status, job.attempts[0].status) == ("queued", "lost")
            stored = h.stored(job)
            assert (stored.status, stored.attempts[0].status) == ("queued", "lost")

    h.run(scenario)


# --- 8. refusals and dispatch failures -------------------------------------------------------


def test_busy_refusal_requeues_and_holds_the_job_for_a_second(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        link.start_replies = [node_pb2.StartJobReply(accepted=False, reason=BUSY)]
        run = make_run()
        h.rec.submit(run)
        job = run.jobs[0]
        await dispatch(h, link)

        busy = f"node busy: {BUSY}"
        assert (job.status, job.wait_reason) == ("queued", f"retrying: {busy}")
        assert [(a.status, a.error) for a in job.attempts] == [("failed", busy)]
        stored = h.stored(job)
        assert (stored.status, [(a.status, a.error) for a in stored.attempts]) == (
            "queued",
            [("failed", busy)],
        )
        assert h.rec.fleet["nA"].reservations == {}

        h.clock.advance(0.5)
        h.step()
        await idle()
        assert len(link.starts) == 1 and job.status == "queued"  # held
        h.clock.advance(0.5)
        await dispatch(h, link, 2)  # the hold is over
        assert [(a.id, a.status) for a in job.attempts][-1] == (f"{job.id}.a2", "dispatching")
        assert h.stored(job).attempts[-1].status == "dispatching"

    h.run(scenario)


def refused(reason: str) -> node_pb2.StartJobReply:
    return node_pb2.StartJobReply(accepted=False, reason=reason)


UNAVAILABLE = NodeCallError("StartJob failed: Socket closed", "UNAVAILABLE")
INVALID = NodeCallError("StartJob failed: unknown agent 'x'", "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("answer", "error", "tries_to_fail"),
    [
        # Busy: not the job's fault, never counted; it waits as long as the node is busy.
        (refused(BUSY), f"node busy: {BUSY}", None),
        (UNAVAILABLE, "dispatch failed: StartJob failed: Socket closed", MAX_DISPATCH_FAILURES),
        (refused("the node is stopping"), "node busy: the node is stopping", None),
        # The spec itself is bad: retrying cannot help.
        (INVALID, "StartJob failed: unknown agent 'x'", 1),
    ],
    ids=["busy", "call-error", "stopping", "invalid-argument"],
)
def test_which_dispatch_failures_count(
    h: Harness, answer: node_pb2.StartJobReply | Exception, error: str, tries_to_fail: int | None
) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run = make_run()
        h.rec.submit(run)
        job = run.jobs[0]
        tries = MAX_DISPATCH_FAILURES + 1 if tries_to_fail is None else tries_to_fail
        for n in range(1, tries + 1):
            assert job.status == "queued", f"before try {n}"
            link.start_replies = [answer]
            await dispatch(h, link, n)
            h.clock.advance(1.0)  # past any hold; the node's heartbeat keeps it online
            h.rec.sessions.on_event("nA", heartbeat("nA", "node-a"))
        assert len(link.starts) == tries
        assert [(a.status, a.error) for a in job.attempts] == [("failed", error)] * tries
        stored = h.stored(job)
        assert [(a.status, a.error) for a in stored.attempts] == [("failed", error)] * tries
        if tries_to_fail is None:
            assert job.status == stored.status == "queued"
            assert run.status == h.stored_run(run.id).status == "running"
            await dispatch(h, link, tries + 1)  # and is still placed again
            assert job.status == "dispatching"
        else:
            assert job.status == stored.status == "failed"
            assert job.result is not None and job.result.error == error
            assert stored.result is not None and stored.result.error == error
            assert run.status == h.stored_run(run.id).status == "failed"
            h.step()
            await idle()
            assert len(link.starts) == tries  # never placed again

    h.run(scenario)


# --- 9. restart -------------------------------------------------------------------------------


def test_restart_resends_a_dispatching_attempt_when_its_node_comes_back(h: Harness) -> None:
    async def scenario() -> None:
        first = h  # the coordinator before the restart
        first.enroll("nA", "node-a")
        first.store.node_seen("nA", "node-a", "10.0.0.1:7000", T0_WALL)
        run = make_run()
        first.store.create_run(run)
        job = run.jobs[0]
        attempt = dispatching_attempt(job, "nA")
        job.attempts.append(attempt)
        job.status, job.node_id = "dispatching", "nA"
        first.store.add_attempt(job, attempt)  # then the coordinator died before StartJob

        h2 = Harness(first.tmp_path, store=first.store)  # a restarted coordinator
        await h2.start()
        link = h2.links["nA"] = FakeLink()
        h2.rec.load()
        assert link.hints == [(["10.0.0.1:7000"], "store")]
        assert list(h2.rec.attempts) == [attempt.id]
        assert list(h2.rec.fleet["nA"].reservations) == [attempt.id]
        loaded = h2.rec.jobs[job.id]

        link.jobs = []  # the node never heard of it
        h2.rec.sessions.on_event("nA", heartbeat("nA", "node-a"))
        await h2.rec.sessions.on_link_state("nA", "up", "10.0.0.1:7000")
        await until(lambda: link.starts, "StartJob re-sent")
        await idle()

        assert [s.attempt_id for s in link.starts] == [attempt.id]
        assert (link.starts[0].job_id, link.starts[0].command) == (job.id, "echo hi")
        assert (loaded.status, [a.status for a in loaded.attempts]) == ("dispatching", ["dispatching"])
        stored = h2.stored(job)
        assert (stored.status, [a.status for a in stored.attempts]) == ("dispatching", ["dispatching"])
        h2.step()
        await idle()
        assert len(link.starts) == 1  # not placed a second time
        h2.rec.sessions.on_event("nA", started(job.id, attempt.id))
        assert h2.stored(job).attempts[0].status == "running"
        assert link.calls() == {"starts": [attempt.id], "cancels": [], "acks": []}

    h.run(scenario)


# --- 10. log cap ------------------------------------------------------------------------------


def _lines(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param((30_000, 30_000, 10), id="chunk-crosses-the-cap"),
        pytest.param((LOG_LINES_MAX - 1, 10), id="chunk-ends-at-the-cap"),
    ],
)
def test_log_lines_are_capped_with_a_marker(h: Harness, chunks: tuple[int, ...]) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run, job = await run_on(h, link)
        attempt_id = job.attempts[0].id
        sent: list[str] = []
        for n, count in enumerate(chunks):
            lines = _lines(f"c{n}-", count)
            sent += lines
            h.rec.sessions.on_event("nA", log_lines(job.id, attempt_id, lines))
        stored = [line for _, aid, line in h.store.logs(job.id, limit=2 * LOG_LINES_MAX) if aid == attempt_id]
        assert len(sent) > LOG_LINES_MAX
        assert stored[-1] == MARKER
        assert len(stored) == LOG_LINES_MAX
        assert stored[:-1] == sent[: len(stored) - 1]

    h.run(scenario)


def test_log_lines_of_inactive_attempts_are_dropped(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run, job = await run_on(h, link)
        attempt_id = job.attempts[0].id
        h.rec.sessions.on_event("nA", log_lines(job.id, attempt_id, ["one", "two"]))
        h.rec.sessions.on_event("nA", log_lines(job.id, "r000001.1.a9", ["unknown attempt"]))
        h.rec.sessions.on_event("nA", result_event(job.id, attempt_id, "success"))
        h.rec.sessions.on_event("nA", log_lines(job.id, attempt_id, ["after the result"]))
        assert h.store.logs(job.id) == [(1, attempt_id, "one"), (2, attempt_id, "two")]
        assert h.stored(job).status == "success"

    h.run(scenario)


@pytest.mark.parametrize(
    ("lost", "marked", "note"),
    [
        pytest.param(0, 0, None, id="nothing-lost"),
        pytest.param(7, 0, "[flota: 7 lines were not delivered; the last 2 lines:]", id="lost-at-the-end"),
        pytest.param(7, 7, None, id="all-marked-in-place"),
        pytest.param(9, 7, "[flota: 2 lines were not delivered; the last 2 lines:]", id="some-at-the-end"),
    ],
)
def test_lost_lines_are_noted_at_the_end_unless_the_log_marks_them(
    h: Harness, lost: int, marked: int, note: str | None
) -> None:
    """A node that dropped lines while cut off marks them in the lines it sends (and says
    how many it marked): only lines lost unmarked get the note and the tail at the end."""

    async def scenario() -> None:
        link = h.node("nA", "node-a")
        _, job = await run_on(h, link)
        attempt_id = job.attempts[0].id
        held = ("[flota: 7 earlier lines dropped on the node: the coordinator was unreachable]", "y", "z")
        event = result_event(
            job.id,
            attempt_id,
            "success",
            log_lines=held if marked else (),
            log_tail="y\nz",
            log_lines_lost=lost,
            log_lines_marked=marked,
        )
        h.rec.sessions.on_event("nA", event)
        stored = [line for _, _, line in h.store.logs(job.id)]
        expected = list(held) if marked else []
        assert stored == expected + ([note, "y", "z"] if note else [])
        assert h.stored(job).result.log_lines_marked == marked  # kept, as the node said it

    h.run(scenario)


def test_log_cap_holds_across_a_restart(h: Harness) -> None:
    async def scenario() -> None:
        first = h  # the coordinator before the restart
        link = first.node("nA", "node-a")
        _, job = await run_on(first, link)
        attempt_id = job.attempts[0].id
        first.rec.sessions.on_event("nA", log_lines(job.id, attempt_id, _lines("x", LOG_LINES_MAX + 5)))

        h2 = Harness(first.tmp_path, store=first.store)  # a restarted coordinator
        await h2.start()
        h2.links["nA"] = FakeLink()
        h2.rec.load()
        h2.rec.sessions.on_event("nA", heartbeat("nA", "node-a"))
        h2.rec.sessions.on_event("nA", log_lines(job.id, attempt_id, _lines("y", 100)))
        assert len(h2.store.logs(job.id, limit=3 * LOG_LINES_MAX)) == LOG_LINES_MAX

    h.run(scenario)


# --- 11. cancel of a queued job ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("jobs", "run_after"), [(1, "cancelled"), (2, "running")], ids=["only-job", "one-of-two"]
)
def test_cancel_of_a_queued_job_ends_it_at_once(h: Harness, jobs: int, run_after: str) -> None:
    async def scenario() -> None:
        run = make_run(jobs=jobs)
        h.rec.submit(run)  # no node online: it stays queued
        h.step()
        job = run.jobs[0]
        assert job.status == "queued"

        assert await h.rec.cancel([job]) == [job.id]

        assert (job.status, job.attempts, job.cancel_requested) == ("cancelled", [], True)
        assert job.result is not None and job.result.error == "cancelled before it started"
        stored = h.stored(job)
        assert (stored.status, stored.attempts, stored.cancel_requested) == ("cancelled", [], True)
        assert stored.result is not None and stored.result.status == "cancelled"
        assert run.status == h.stored_run(run.id).status == run_after
        assert (run.id in h.rec.runs) == (run_after == "running")
        if jobs == 2:
            assert run.jobs[1].status == h.stored(run.jobs[1]).status == "queued"
        # Cancelling again is a no-op.
        assert await h.rec.cancel([job]) == []

    h.run(scenario)


# --- 12. hints -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_id", "source", "fingerprint", "taken"),
    [
        ("nA", "register", "", True),  # the node's own word, over mTLS
        ("nA", "mdns", "fp-nA", True),  # an announcement with the certificate we issued
        ("nA", "mdns", "fp-rogue", False),  # someone announcing nA's id with another certificate
        ("nA", "mdns", "", False),
        ("nZ", "register", "", False),  # never enrolled
    ],
    ids=["register", "mdns-right-fp", "mdns-foreign-fp", "mdns-no-fp", "unknown-id"],
)
def test_hints_are_taken_only_for_enrolled_ids_and_issued_certificates(
    h: Harness, node_id: str, source: str, fingerprint: str, taken: bool
) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        assert h.rec.sessions.hint(node_id, ["10.9.9.9:7380"], source, fingerprint) is taken
        assert ((["10.9.9.9:7380"], source) in link.hints) is (taken and node_id == "nA")

    h.run(scenario)


# --- 13. regressions from the second review ----------------------------------------------------


def _failing(message: str) -> Callable[..., None]:
    """A store method that fails the way a full or locked disk does."""

    def fail(*args: object, **kwargs: object) -> None:
        raise StoreError(f"database error: {message}")

    return fail


def test_an_mdns_goodbye_never_stops_work_going_to_a_connected_node(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        h.rec.sessions.goodbye("nA")  # what a (forgeable) mDNS removal triggers
        run = make_run()
        h.rec.submit(run)
        await dispatch(h, link)
        assert run.jobs[0].status == "dispatching"
        # The node's own goodbye over mTLS does stop new work.
        h.rec.sessions.goodbye("nA", leaving=True)
        second = make_run(run_id="r000002")
        h.rec.submit(second)
        h.step()
        await idle()
        assert second.jobs[0].status == "queued" and len(link.starts) == 1

    h.run(scenario)


@pytest.mark.parametrize("status", ["", "running", "queued", "bogus"])
def test_a_result_status_the_node_should_never_send_fails_the_attempt(h: Harness, status: str) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run, job = await run_on(h, link)
        h.rec.sessions.on_event("nA", result_event(job.id, job.attempts[0].id, status))
        assert job.status == h.stored(job).status == "failed"
        assert "node reported status" in job.attempts[0].error
        assert run.status == h.stored_run(run.id).status == "failed"

    h.run(scenario)


def test_log_lines_go_to_the_job_of_the_attempt_whatever_the_node_names(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run = make_run()
        h.rec.submit(run)
        job = run.jobs[0]
        await dispatch(h, link)
        h.rec.sessions.on_event("nA", log_lines("rOTHER.1", job.attempts[0].id, ["forged line"]))
        assert h.store.logs("rOTHER.1") == []
        assert [line for _, _, line in h.store.logs(job.id)] == ["forged line"]

    h.run(scenario)


def test_refusals_are_bounded_and_leave_no_hold_behind(h: Harness) -> None:
    from coordinator.outcomes import MAX_REFUSALS

    async def scenario() -> None:
        link = h.node("nA", "node-a")
        busy = node_pb2.StartJobReply(accepted=False, reason="the node is stopping")
        link.start_replies = [busy] * (MAX_REFUSALS + 5)
        run = make_run()
        h.rec.submit(run)
        job = run.jobs[0]
        for i in range(MAX_REFUSALS):
            h.rec.sessions.on_event("nA", heartbeat("nA", "node-a"))
            await dispatch(h, link, i + 1)
            h.clock.advance(1.0)
        assert job.status == h.stored(job).status == "failed"
        assert len(h.stored(job).attempts) == MAX_REFUSALS
        assert not h.rec.planner.held(job.id)

    h.run(scenario)


def test_a_cancel_the_node_never_heard_is_sent_again_on_reconnect(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run, job = await run_on(h, link)
        attempt_id = job.attempts[0].id
        link.cancel_error = NodeCallError(
            "CancelJob failed: the connection closed", grpc.StatusCode.UNAVAILABLE
        )
        await h.rec.cancel([job])
        assert job.cancel_requested and job.status == "running"
        link.cancel_error = None
        link.jobs = [node_job(job.id, attempt_id, "running")]
        await h.rec.sessions.on_link_state("nA", "down", "gone")
        await h.rec.sessions.on_link_state("nA", "up", "10.0.0.1:7000")
        await until(lambda: any(a == attempt_id for a, _ in link.cancels[1:]), "a second CancelJob")

    h.run(scenario)


def test_a_failed_store_write_at_dispatch_leaves_the_job_queued(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run = make_run()
        h.rec.submit(run)
        job = run.jobs[0]
        real = h.store.add_attempt

        locked = _failing("database is locked")
        h.store.add_attempt = locked  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            h.rec.tick()
        assert (job.status, job.attempts, h.rec.attempts) == ("queued", [], {})
        h.store.add_attempt = real  # type: ignore[method-assign]
        await dispatch(h, link)
        assert job.status == h.stored(job).status == "dispatching"

    h.run(scenario)


def test_a_failed_store_write_of_a_result_is_not_acked_and_is_taken_again(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run, job = await run_on(h, link)
        attempt_id = job.attempts[0].id
        real = h.store.save_attempt

        broken = _failing("disk I/O error")
        h.store.save_attempt = broken  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            h.rec.sessions.on_event("nA", result_event(job.id, attempt_id, "success"))
        h.step()
        await idle()
        assert link.acks == [] and attempt_id in h.rec.attempts
        h.store.save_attempt = real  # type: ignore[method-assign]
        link.jobs = [node_job(job.id, attempt_id, "finished", job_result(job.id, attempt_id, "success"))]
        await h.rec.sessions.on_link_state("nA", "down", "gone")
        await h.rec.sessions.on_link_state("nA", "up", "10.0.0.1:7000")
        await until(lambda: link.acks, "the ack")
        assert job.status == h.stored(job).status == "success"
        assert run.status == h.stored_run(run.id).status == "success"

    h.run(scenario)


def test_a_run_whose_jobs_all_ended_is_finished_on_load(h: Harness, tmp_path: Path) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run, job = await run_on(h, link)

        crash = _failing("the process died here")
        h.store.finish_run = crash  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            h.rec.sessions.on_event("nA", result_event(job.id, job.attempts[0].id, "success"))
        del h.store.finish_run  # back to the real method
        assert h.stored(job).status == "success" and h.stored_run(run.id).status == "running"
        restarted = Harness(tmp_path, store=h.store, clock=h.clock)
        await restarted.start()
        restarted.rec.load()
        assert run.id not in restarted.rec.runs
        assert h.stored_run(run.id).status == "success"

    h.run(scenario)


def test_a_failed_write_at_a_refusal_changes_nothing_and_never_runs_a_job_twice(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        link.start_replies = [node_pb2.StartJobReply(accepted=False, reason=BUSY)]
        run = make_run()
        h.rec.submit(run)
        job = run.jobs[0]
        real = h.store.save_attempt

        broken = _failing("disk I/O error")
        h.store.save_attempt = broken  # type: ignore[method-assign]
        h.step()
        await until(lambda: link.starts, "the first StartJob")
        await idle()
        h.store.save_attempt = real  # type: ignore[method-assign]
        assert job.status == "dispatching" and [a.status for a in job.attempts] == ["dispatching"]
        h.clock.advance(2.0)
        h.step()
        await idle()
        assert len(link.starts) == 1 and len(job.attempts) == 1  # no second attempt beside the first

    h.run(scenario)


def test_a_run_whose_finish_failed_to_store_is_finished_on_a_later_tick(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a")
        run = make_run()
        h.rec.submit(run)
        job = run.jobs[0]
        await dispatch(h, link)

        locked = _failing("database is locked")
        h.store.finish_run = locked  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            h.rec.sessions.on_event("nA", result_event(job.id, job.attempts[0].id, "success"))
        del h.store.finish_run
        assert run.id in h.rec.runs
        h.step()
        assert run.id not in h.rec.runs and h.stored_run(run.id).status == "success"

    h.run(scenario)


# --- a run's total budget (flota run --budget) -------------------------------------------------


def test_a_spent_run_budget_ends_its_queued_jobs_unstarted(h: Harness) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a", slots=1)
        run = make_run(jobs=3)
        run.budget_usd = 1.0
        h.rec.submit(run)
        first, second, third = run.jobs
        await dispatch(h, link)
        h.rec.sessions.on_event("nA", result_event(first.id, first.attempts[0].id, "success", cost_usd=0.4))
        assert run.reason == "" and second.status == "queued"  # $0.60 left: the next job starts
        await dispatch(h, link, 2)
        h.rec.sessions.on_event("nA", result_event(second.id, second.attempts[0].id, "success", cost_usd=0.7))
        assert third.status == "cancelled" and not third.attempts
        assert third.result is not None and third.result.reason == "run_budget"
        assert third.result.error == "not started: " + run.reason
        assert run.reason.startswith("the run's budget of $1.00 is spent ($1.1000")
        h.step()
        await idle()
        assert len(link.starts) == 2  # nothing more was sent
        stored = h.stored_run(run.id)
        assert (stored.status, stored.reason, stored.budget_usd) == ("cancelled", run.reason, 1.0)
        assert stored.spent_usd == pytest.approx(1.1)
        assert h.stored(third).status == "cancelled"

    h.run(scenario)


def test_a_run_found_spent_at_load_starts_nothing_more(h: Harness, tmp_path: Path) -> None:
    async def scenario() -> None:
        link = h.node("nA", "node-a", slots=1)
        run = make_run(jobs=2)
        run.budget_usd = 0.5
        h.rec.submit(run)
        first = run.jobs[0]
        await dispatch(h, link)
        # The coordinator dies after storing the result, before the run's jobs were stopped.
        crash = _failing("the process died here")
        h.store.stop_jobs = crash  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            h.rec.sessions.on_event(
                "nA", result_event(first.id, first.attempts[0].id, "success", cost_usd=0.9)
            )
        del h.store.stop_jobs
        assert h.stored(run.jobs[1]).status == "queued"
        restarted = Harness(tmp_path, store=h.store, clock=h.clock)
        await restarted.start()
        restarted.rec.load()
        assert run.id not in restarted.rec.runs  # its last job stopped, it ended
        stored = h.stored_run(run.id)
        assert stored.status == "cancelled" and stored.reason.startswith("the run's budget of $0.50 is spent")
        assert h.stored(run.jobs[1]).status == "cancelled"

    h.run(scenario)
