"""coordinator/planner.py: the wait reason of a job pinned to a node that takes no work.

The scheduler sees only schedulable nodes; the planner tells it why each other known
node is left out, so `flota run --on node-1` on a drained node-1 says "draining", not
"no node named 'node-1'"."""

from __future__ import annotations

import pytest

from coordinator.fleet import NodeEntry
from coordinator.models import JobPlacement, NodeInfo, NodeState
from coordinator.planner import unavailable_reason
from tests.coordinator.fakes import Harness, idle, make_run

DRAINING = "node 'node-1' is draining (flota node drain node-1 --undo)"


@pytest.mark.parametrize("pin", ["node-1", "n1"], ids=["by-name", "by-id"])
@pytest.mark.parametrize("others", [False, True], ids=["alone", "with-another-node"])
def test_a_job_pinned_to_a_draining_node_says_it_is_draining(h: Harness, pin: str, others: bool) -> None:
    async def scenario() -> None:
        h.node("n1", "node-1")
        if others:
            h.node("n2", "node-2")
        h.rec.drain(h.rec.fleet["n1"], True)
        run = make_run(placement=JobPlacement(node=pin))
        h.rec.submit(run)
        h.step()
        await idle()
        job = run.jobs[0]
        assert (job.status, job.wait_reason) == ("queued", DRAINING)
        assert h.stored(job).wait_reason == DRAINING

    h.run(scenario)


def test_an_unpinned_job_still_says_every_online_node_is_draining(h: Harness) -> None:
    async def scenario() -> None:
        h.node("n1", "node-1")
        h.rec.drain(h.rec.fleet["n1"], True)
        run = make_run()
        h.rec.submit(run)
        h.step()
        await idle()
        assert run.jobs[0].wait_reason == "every online node is draining (node-1)"

    h.run(scenario)


def test_a_pin_to_a_name_no_node_has_still_says_so(h: Harness) -> None:
    async def scenario() -> None:
        h.node("n1", "node-1")
        run = make_run(placement=JobPlacement(node="node-9"))
        h.rec.submit(run)
        h.step()
        await idle()
        assert run.jobs[0].wait_reason == "no node named 'node-9'"

    h.run(scenario)


REASONS = [
    # (state, draining, leaving, has facts, reason)
    (NodeState.ONLINE, True, False, True, DRAINING),
    (NodeState.ONLINE, False, True, True, "node 'node-1' is shutting down"),
    (NodeState.ONLINE, False, False, False, "node 'node-1' has not sent its facts yet"),
    (NodeState.UNKNOWN, False, False, False, "node 'node-1' is not connected yet"),
    (NodeState.UNREACHABLE, False, False, True, "node 'node-1' is unreachable"),
    (NodeState.LOST, False, False, True, "node 'node-1' is lost"),
    (NodeState.OFFLINE, True, False, True, "node 'node-1' is offline (and draining)"),
]


@pytest.mark.parametrize(("state", "draining", "leaving", "facts", "reason"), REASONS)
def test_unavailable_reason(
    state: NodeState, draining: bool, leaving: bool, facts: bool, reason: str
) -> None:
    entry = NodeEntry("n1", "node-1", state, NodeInfo(id="n1", name="node-1") if facts else None)
    entry.draining, entry.leaving = draining, leaving
    assert not entry.schedulable
    assert unavailable_reason(entry) == reason
