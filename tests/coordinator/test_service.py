"""coordinator/service.py: what a submit says about jobs no current node can run.

`flota run --cpus 999 'echo hi'` is accepted (a node may join) but its reply, which
`flota run` prints, already carries why each job cannot start now."""

from __future__ import annotations

import pytest

from coordinator.errors import InvalidRequest
from coordinator.models import JobPlacement
from coordinator.pki import CertificateAuthority
from coordinator.service import Service
from coordinator.validate import Submission, Task
from tests.coordinator.fakes import Harness, idle, make_run, until
from tests.fleet import Fleet, wait_until


def submission(**placement: object) -> Submission:
    return Submission(tasks=(Task("t", "shell", "echo hi"),), placement=JobPlacement(**placement))  # type: ignore[arg-type]


SUBMITS = [
    # (placement, the submitted job's wait reason)
    ({"cpus": 999.0}, "no matching node has 999 cpus in total (largest: 2)"),
    ({"labels": {"gpu": "a100"}}, "no node with label gpu=a100"),
    ({"networks": ("lab",)}, "no node on network lab"),
    ({"node": "node-b"}, "node 'node-b' is draining (flota node drain node-b --undo)"),
    ({}, "waiting for a node"),  # it fits: the next tick places it
]


@pytest.mark.parametrize(
    ("placement", "reason"), SUBMITS, ids=["cpus", "label", "network", "draining", "fits"]
)
def test_a_submit_says_why_no_current_node_can_run_a_job(
    h: Harness, ca: CertificateAuthority, placement: dict[str, object], reason: str
) -> None:
    async def scenario() -> None:
        service = Service(h.rec, ca, h.config)
        link = h.node("nA", "node-a")
        h.node("nB", "node-b")
        h.rec.drain(h.rec.fleet["nB"], True)
        run = await service.submit(submission(**placement))
        job = run.jobs[0]
        assert (job.status, job.wait_reason) == ("queued", reason)
        assert h.stored(job).wait_reason == reason  # `flota status` says the same
        h.step()
        if placement:
            await idle()
            assert job.status == "queued" and link.starts == []  # still queued: a node may join
        else:
            await until(lambda: link.starts, "StartJob")

    h.run(scenario)


def test_a_submit_with_no_node_at_all_says_so(h: Harness, ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        run = await Service(h.rec, ca, h.config).submit(submission(cpus=4.0))
        assert run.jobs[0].wait_reason == "no nodes are online"

    h.run(scenario)


def test_a_real_submit_says_why_its_jobs_wait(fleet: Fleet) -> None:
    """Defects 7 and 8 through real processes: the reply `flota run` prints carries the reason."""
    fleet.start_coordinator()
    fleet.start_node("only")
    submitted = fleet.json("run", "--cpus", "999", "echo hi")
    huge = submitted["jobs"][0]
    assert huge["status"] == "queued"
    # ... and the run is shown as waiting, not running: in the reply, its status, the list
    assert submitted["status"] == "waiting"
    assert fleet.json("status", submitted["id"])["status"] == "waiting"
    listed = {r["id"]: r["status"] for r in fleet.json("status")}
    assert listed[submitted["id"]] == "waiting", listed
    assert " waiting " in next(
        line for line in fleet.flota("status").stdout.splitlines() if submitted["id"] in line
    )
    assert huge["wait_reason"].startswith("no matching node has 999 cpus in total (largest: "), huge
    said = fleet.flota("run", "--cpus", "999", "echo hi", check=True).stdout.splitlines()
    assert len(said) == 2 and said[1].endswith(huge["wait_reason"]), said  # `flota run` says it too

    fleet.flota("node", "drain", "only", check=True)
    pinned = fleet.json("run", "--on", "only", "echo x")["jobs"][0]
    draining = "node 'only' is draining (flota node drain only --undo)"
    assert pinned["wait_reason"] == draining, pinned
    assert fleet.json("status", pinned["id"])["wait_reason"] == draining

    fleet.flota("node", "drain", "only", "--undo", check=True)  # the pinned job runs: its run ends
    wait_until(lambda: fleet.json("status", pinned["id"])["status"] == "success", what="pinned job ran")
    assert fleet.json("status", submitted["id"])["status"] == "waiting"  # still: no node fits it


@pytest.mark.parametrize("ttl", [9.9, -1.0, 7 * 86400 + 1, float("inf"), float("nan")])
def test_a_token_lifetime_outside_10_seconds_to_7_days_is_refused(
    h: Harness, ca: CertificateAuthority, ttl: float
) -> None:
    with pytest.raises(InvalidRequest, match="token lifetime must be between 10 seconds and 7 days"):
        Service(h.rec, ca, h.config).create_token(ttl)


@pytest.mark.parametrize(("ttl", "lasts"), [(0.0, None), (10.0, 10.0), (7 * 86400, 7 * 86400)])
def test_a_token_lifetime_of_0_means_the_default(
    h: Harness, ca: CertificateAuthority, ttl: float, lasts: float | None
) -> None:
    _, expires_at = Service(h.rec, ca, h.config).create_token(ttl)
    assert expires_at - h.clock.time() == (h.config.token_ttl_s if lasts is None else lasts)


def test_the_stream_snapshot_carries_the_jobs_of_the_latest_runs_up_to_its_cap(
    h: Harness, ca: CertificateAuthority
) -> None:
    """Newest first, a run's jobs all or none, ended runs too; past the cap the older runs
    come without theirs; a live run always has its jobs (from memory)."""
    for i, jobs in enumerate([3, 2, 4, 1]):  # oldest first: r00000a (3 jobs) ... r00000d (1)
        run = make_run(f"r00000{'abcd'[i]}", jobs)
        run.created_at += i
        h.store.create_run(run)
        h.store.finish_run(run.id, "success", run.created_at + 1)
    live = make_run("r00000e", 2)
    live.created_at += 10
    h.store.create_run(live)
    h.rec.runs[live.id] = live
    service = Service(h.rec, ca, h.config)

    def sizes(up_to: int) -> dict[str, int]:
        return {r.id: len(r.jobs) for r in service.runs(10, up_to)}

    got = sizes(7)  # e (2) + d (1) + c (4) = 7; b does not fit, nor a after it
    assert got == {"r00000e": 2, "r00000d": 1, "r00000c": 4, "r00000b": 0, "r00000a": 0}
    assert list(got) == ["r00000e", "r00000d", "r00000c", "r00000b", "r00000a"]  # newest first
    assert sizes(6) == {**got, "r00000c": 0}  # a run's jobs all or none
    assert sizes(100)["r00000a"] == 3
    assert sizes(0) == {**dict.fromkeys(got, 0), "r00000e": 2}  # the live run's from memory
