"""cli/top/state.py: the fleet as events tell it."""

from __future__ import annotations

from cli.top import state as st
from cli.top.state import FleetState, job_row, node_row
from protos.flota.v1 import coordinator_pb2 as pb


def node(node_id: str, name: str, state: str = "online") -> pb.Event:
    return pb.Event(type="node.updated", node=pb.NodeStatus(info={"id": node_id, "name": name}, state=state))


def job(job_id: str, status: str, updated: float = 1.0) -> pb.Event:
    return pb.Event(type=f"job.{status}", job=pb.Job(id=job_id, status=status, updated_at=updated, name="t"))


def test_events_build_the_state_and_a_resync_starts_it_again() -> None:
    s = FleetState()
    assert s.apply(node("n1", "laptop")) == {"nodes"}
    assert s.apply(job("r1.1", "running")) == {"jobs"}
    s.apply(job("r1.2", "success", 5.0))
    s.apply(job("r1.3", "queued", 3.0))
    assert [j.id for j in s.sorted_jobs()] == ["r1.1", "r1.3", "r1.2"]  # active first
    assert [j.id for j in s.sorted_jobs("SUCC")] == ["r1.2"]
    s.apply(pb.Event(type="node.removed", node=pb.NodeStatus(info={"id": "n1"})))
    assert not s.nodes
    s.apply(pb.Event(type="resync", index=7))
    assert (s.jobs, s.live, s.index) == ({}, False, 7)
    s.apply(pb.Event(type="live", index=7))
    assert s.live


def test_ended_jobs_beyond_the_cap_are_forgotten_oldest_first(monkeypatch: object) -> None:
    s = FleetState()
    s.apply(job("r0.1", "running", 0.0))
    for i in range(st.MAX_JOBS + 5):
        s.apply(job(f"r1.{i}", "success", float(i)))
    assert len(s.jobs) == st.MAX_JOBS
    assert "r0.1" in s.jobs and "r1.0" not in s.jobs and f"r1.{st.MAX_JOBS + 4}" in s.jobs


def test_rows_show_what_a_user_reads_first() -> None:
    lost = pb.NodeStatus(info={"id": "n1", "name": "laptop", "slots": 2, "running": 1}, state="unreachable")
    lost.last_seen = 100.0
    assert node_row(lost, now=112.0)[:4] == ("laptop", "unreachable 12s", "-", "1/2")
    waiting = pb.Job(id="r1.1", status="queued", name="build", wait_reason="no node has 9 GPUs")
    assert job_row(waiting) == ("r1.1", "queued", "-", "-", "-", "build (no node has 9 GPUs)")


def test_a_pruned_run_leaves_with_its_jobs() -> None:
    s = FleetState()
    s.apply(pb.Event(type="run.ended", run=pb.Run(id="r1", status="success")))
    s.apply(pb.Event(type="run.ended", run=pb.Run(id="r2", status="success")))
    for job_id in ("r1.1", "r1.2", "r2.1"):
        s.apply(pb.Event(type="job.success", job=pb.Job(id=job_id, run_id=job_id[:2], status="success")))
    assert s.apply(pb.Event(type="run.removed", run=pb.Run(id="r1"))) == {"jobs"}
    assert list(s.runs) == ["r2"] and list(s.jobs) == ["r2.1"]
