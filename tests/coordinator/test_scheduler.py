"""Table-driven tests for the pure scheduler: snapshot in, placements and reasons out."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from coordinator.models import JobView, NodeView, Placement, Plan, Snapshot
from coordinator.scheduler import schedule


def N(node_id: str, **kw: Any) -> NodeView:
    kw.setdefault("name", node_id)
    kw.setdefault("cpus", 8.0)
    kw.setdefault("memory_mb", 16384)
    return NodeView(id=node_id, **kw)


def J(job_id: str, **kw: Any) -> JobView:
    kw.setdefault("run_id", "run-" + job_id)  # a run of its own unless a case says otherwise
    return JobView(id=job_id, **kw)


@dataclass
class Case:
    nodes: list[NodeView]
    jobs: list[JobView]
    placed: dict[str, str]  # job id -> node id
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> substring of the reason
    unavailable: dict[str, str] = field(default_factory=dict)  # Snapshot.unavailable


# One model server "s" with 2 slots, serving m1 and m2.
SERVER: dict[str, Any] = {"servers": {"model:m1": "s", "model:m2": "s"}, "server_free": {"s": 2}}


def placed(plan: Plan) -> dict[str, str]:
    return {p.job_id: p.node_id for p in plan.placements}


CASES: dict[str, Case] = {
    # --- fit: slots, cpus, memory, gpus -------------------------------------------------
    "slots-fill-then-wait": Case(
        [N("a", slots=2)],
        [J("j1"), J("j2"), J("j3")],
        {"j1": "a", "j2": "a"},
        {"j3": "all matching nodes are busy (1 nodes, 0 free slots)"},
    ),
    "slots-used-in-snapshot": Case(
        [N("a", slots=2, used_slots=1), N("b", slots=1, used_slots=1)],
        [J("j1"), J("j2")],
        {"j1": "a"},
        {"j2": "all matching nodes are busy (2 nodes, 0 free slots)"},
    ),
    "cpus-free": Case(
        [N("a", slots=4, cpus=4.0, used_cpus=1.0)],
        [J("j1", cpus=3.0), J("j2", cpus=1.0)],
        {"j1": "a"},
        {"j2": "no node with 1 free cpus right now"},
    ),
    "cpus-float-epsilon": Case(
        [N("a", slots=3, cpus=0.3)],
        [J("j1", cpus=0.1), J("j2", cpus=0.1), J("j3", cpus=0.1)],
        {"j1": "a", "j2": "a", "j3": "a"},
    ),
    "cpus-never-fit": Case(
        [N("a", cpus=4.0), N("b", cpus=2.0, used_slots=1)],
        [J("j1", cpus=8.0)],
        {},
        {"j1": "no matching node has 8 cpus in total (largest: 4)"},
    ),
    "memory-free": Case(
        [N("a", slots=4, memory_mb=4096, used_memory_mb=1024)],
        [J("j1", memory_mb=3072), J("j2", memory_mb=1), J("j3")],
        {"j1": "a", "j3": "a"},
        {"j2": "no node with 1 MB of free memory right now"},
    ),
    "memory-unasked-ignores-unknown-memory": Case(
        [N("a", memory_mb=0)],
        [J("j1")],
        {"j1": "a"},
    ),
    "memory-never-fit": Case(
        [N("a", memory_mb=8192)],
        [J("j1", memory_mb=65536)],
        {},
        {"j1": "no matching node has 65536 MB of memory in total (largest: 8192)"},
    ),
    "gpus-free": Case(
        [N("cpu", slots=4), N("gpu", slots=4, gpus=2, load=0.9)],
        [J("j1", gpus=2), J("j2", gpus=1), J("j3")],
        {"j1": "gpu", "j3": "cpu"},
        {"j2": "no node with 1 free gpus right now"},
    ),
    "gpus-never-fit": Case(
        [N("a", gpus=1), N("b")],
        [J("j1", gpus=2)],
        {},
        {"j1": "no matching node has 2 gpus in total (largest: 1)"},
    ),
    # --- labels, pin, networks, agent ---------------------------------------------------
    "labels-match": Case(
        [N("a", labels={"role": "dev"}), N("b", labels={"role": "research", "os": "linux"}, load=0.9)],
        [J("j1", labels={"role": "research", "os": "linux"})],
        {"j1": "b"},
    ),
    "labels-mismatch": Case(
        [N("a", labels={"role": "dev"})],
        [J("j1", labels={"role": "research"})],
        {},
        {"j1": "no node with label role=research"},
    ),
    "labels-missing-key": Case(
        [N("a", labels={"role": "research"})],
        [J("j1", labels={"os": "mac", "role": "research"})],
        {},
        {"j1": "no node with label os=mac"},
    ),
    "pin-by-id": Case(
        [N("a"), N("b", load=0.9)],
        [J("j1", node="b")],
        {"j1": "b"},
    ),
    "pin-by-name": Case(
        [N("id-1", name="laptop"), N("id-2", name="gpu-box", load=0.9)],
        [J("j1", node="gpu-box")],
        {"j1": "id-2"},
    ),
    "pin-unknown": Case(
        [N("a")],
        [J("j1", node="gpu-box")],
        {},
        {"j1": "no node named 'gpu-box'"},
    ),
    "pin-to-a-draining-node": Case(
        [N("a")],
        [J("j1", node="node-1"), J("j2", node="id-1")],
        {},
        {"j1": "node 'node-1' is draining", "j2": "node 'node-1' is draining"},
        {"node-1": "node 'node-1' is draining", "id-1": "node 'node-1' is draining"},
    ),
    "pin-unknown-beside-an-unavailable-node": Case(
        [N("a")],
        [J("j1", node="gpu-box")],
        {},
        {"j1": "no node named 'gpu-box'"},
        {"node-1": "node 'node-1' is draining"},
    ),
    "unavailable-nodes-matter-only-to-pins": Case(
        [N("a", used_slots=1)],
        [J("j1")],
        {},
        {"j1": "all matching nodes are busy"},
        {"node-1": "node 'node-1' is draining"},
    ),
    "pin-busy-is-dynamic": Case(
        [N("a", used_slots=1), N("b")],
        [J("j1", node="a")],
        {},
        {"j1": "all matching nodes are busy (1 nodes, 0 free slots)"},
    ),
    "networks-allowed": Case(
        [N("a", network="home"), N("b", network="vpn", load=0.9)],
        [J("j1", networks=("vpn", "office"))],
        {"j1": "b"},
    ),
    "networks-none-allowed": Case(
        [N("a", network="home")],
        [J("j1", networks=("vpn",))],
        {},
        {"j1": "no node on network vpn"},
    ),
    "networks-avoided": Case(
        [N("a", network="public"), N("b", network="home", load=0.9)],
        [J("j1", avoid_networks=("public",)), J("j2", avoid_networks=("public", "home"))],
        {"j1": "b"},
        {"j2": "all matching nodes are on avoided networks (public, home)"},
    ),
    "agent-cli": Case(
        [N("a", agents=frozenset({"claude"})), N("b", agents=frozenset({"aider"}), load=0.9)],
        [J("j1", agent_cli="aider"), J("j2", agent_cli="codex"), J("j3")],
        {"j1": "b", "j3": "a"},
        {"j2": "no node has agent CLI 'codex'"},
    ),
    "static-reason-beats-busy": Case(
        [N("a", network="home", used_slots=1), N("b", cpus=4.0, used_slots=1)],
        [J("j1", node="a", networks=("vpn",)), J("j2", cpus=16.0), J("j3", agent_cli="aider")],
        {},
        {
            "j1": "no node on network vpn",
            "j2": "no matching node has 16 cpus in total",
            "j3": "no node has agent CLI 'aider'",
        },
    ),
    "no-nodes": Case([], [J("j1")], {}, {"j1": "no nodes are online"}),
    # --- exclusive ------------------------------------------------------------------------
    "exclusive-needs-idle-node": Case(
        [N("a", slots=4, used_slots=1), N("b", slots=4, load=0.9)],
        [J("j1", exclusive=True)],
        {"j1": "b"},
    ),
    "exclusive-waits-for-idle": Case(
        [N("a", slots=4, used_slots=1)],
        [J("j1", exclusive=True)],
        {},
        {"j1": "waiting for an idle node (exclusive)"},
    ),
    "exclusive-closes-node-for-the-pass": Case(
        [N("a", slots=4)],
        [J("j1", exclusive=True), J("j2")],
        {"j1": "a"},
        {"j2": "every matching node runs an exclusive job (1 nodes)"},
    ),
    "exclusive-busy-node-takes-nothing": Case(
        [N("a", slots=4, used_slots=1, exclusive_busy=True), N("b", slots=1)],
        [J("j1"), J("j2")],
        {"j1": "b"},
        {"j2": "all matching nodes are busy (2 nodes, 0 free slots)"},
    ),
    # --- spread -------------------------------------------------------------------------
    "soft-spread-prefers-other-nodes": Case(
        [N("big", slots=8), N("small", slots=2, load=0.5)],
        [J(f"j{k}", run_id="r", order=float(k)) for k in range(1, 5)],
        # j2 goes to the busier small node because big already has a job of run r.
        {"j1": "big", "j2": "small", "j3": "big", "j4": "small"},
    ),
    "soft-spread-counts-snapshot-jobs": Case(
        [N("a", slots=4, run_counts={"r": 1}), N("b", slots=4, used_slots=2, run_counts={"x": 2})],
        [J("j1", run_id="r"), J("j2", run_id="x")],
        {"j1": "b", "j2": "a"},
    ),
    "soft-spread-doubles-up-when-it-must": Case(
        [N("a", slots=4)],
        [J("j1", run_id="r"), J("j2", run_id="r")],
        {"j1": "a", "j2": "a"},
    ),
    "hard-spread-waits": Case(
        [N("a", slots=4), N("b", slots=4)],
        [J(f"j{k}", run_id="r", spread=True, order=float(k)) for k in range(1, 4)] + [J("k1", order=9.0)],
        {"j1": "a", "j2": "b", "k1": "a"},
        {"j3": "every matching node already runs a job of this run (spread)"},
    ),
    "hard-spread-counts-snapshot-jobs": Case(
        [N("a", slots=4, run_counts={"r": 1}), N("b", slots=4, load=0.9)],
        [J("j1", run_id="r", spread=True), J("j2", run_id="r", spread=True)],
        {"j1": "b"},
        {"j2": "(spread)"},
    ),
    # --- order and capacity within a pass -------------------------------------------------
    "order-field-first": Case(
        [N("a", slots=1)],
        [J("j1", order=2.0), J("j2", order=1.0)],
        {"j2": "a"},
        {"j1": "busy"},
    ),
    "order-ties-by-id": Case(
        [N("a", slots=1)],
        [J("jb", order=1.0), J("ja", order=1.0)],
        {"ja": "a"},
        {"jb": "busy"},
    ),
    "capacity-consumed-within-pass": Case(
        [N("a", slots=4, cpus=4.0, gpus=1), N("b", slots=4, cpus=4.0, gpus=1, load=0.9)],
        [J("j1", cpus=3.0, gpus=1), J("j2", cpus=3.0), J("j3", gpus=1), J("j4", gpus=1)],
        {"j1": "a", "j2": "b", "j3": "b"},
        {"j4": "no node with 1 free gpus right now"},
    ),
    # --- tie-breaks ---------------------------------------------------------------------
    "tie-least-busy-ratio": Case(
        [N("a", slots=2, used_slots=1), N("b", slots=4, used_slots=1, load=0.9)],
        [J("j1")],
        {"j1": "b"},  # 1/4 beats 1/2 despite the higher load
    ),
    "tie-lowest-load": Case(
        [N("a", slots=2, used_slots=1, load=0.5), N("b", slots=4, used_slots=2, load=0.2)],
        [J("j1")],
        {"j1": "b"},
    ),
    "tie-name": Case(
        [N("z", name="beta"), N("y", name="alpha")],
        [J("j1")],
        {"j1": "y"},
    ),
    "tie-id": Case(
        [N("n2", name="same"), N("n1", name="same")],
        [J("j1")],
        {"j1": "n1"},
    ),
    # --- a local model server's slots (shared by its models) --------------------------
    "model-slots-cap-the-node": Case(
        [N("gpu", slots=8, agents=frozenset({"model:m1"}), **SERVER)],
        [
            J("j1", agent_cli="model:m1"),
            J("j2", agent_cli="model:m1"),
            J("j3", agent_cli="model:m1"),
            J("j4"),
        ],
        {"j1": "gpu", "j2": "gpu", "j4": "gpu"},  # a job for no model still takes a node slot
        {"j3": "every slot of the model servers of m1 is in use (1 nodes)"},
    ),
    "model-slots-shared-by-the-servers-models": Case(
        [
            N(
                "gpu",
                slots=8,
                agents=frozenset({"model:m1", "model:m2"}),
                servers=SERVER["servers"],
                server_free={"s": 1},
            )
        ],
        [J("j1", agent_cli="model:m2"), J("j2", agent_cli="model:m1")],
        {"j1": "gpu"},
        {"j2": "every slot of the model servers of m1 is in use"},
    ),
    "model-slots-full-sends-it-to-another-server": Case(
        [
            N("a", slots=8, agents=frozenset({"model:m1"}), servers=SERVER["servers"], server_free={"s": 0}),
            N("b", slots=8, load=0.9, agents=frozenset({"model:m1"}), **SERVER),
        ],
        [J("j1", agent_cli="model:m1")],
        {"j1": "b"},
    ),
    "model-slots-not-said-no-limit": Case(
        [N("old", slots=3, agents=frozenset({"model:m1"}))],
        [J("j1", agent_cli="model:m1"), J("j2", agent_cli="model:m1"), J("j3", agent_cli="model:m1")],
        {"j1": "old", "j2": "old", "j3": "old"},
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_schedule_table(case: Case) -> None:
    snapshot = Snapshot(nodes=tuple(case.nodes), queue=tuple(case.jobs), unavailable=case.unavailable)
    plan = schedule(snapshot, now=0.0)
    assert placed(plan) == case.placed
    assert set(plan.waiting) == set(case.waiting)
    for job_id, reason in case.waiting.items():
        assert reason in plan.waiting[job_id]
        assert "\n" not in plan.waiting[job_id]


def test_placements_follow_queue_order() -> None:
    nodes = (N("a", slots=8),)
    queue = (J("j3", order=3.0), J("j1", order=1.0), J("j2", order=2.0))
    plan = schedule(Snapshot(nodes=nodes, queue=queue), now=0.0)
    assert plan.placements == (Placement("j1", "a"), Placement("j2", "a"), Placement("j3", "a"))


def test_deterministic_and_independent_of_input_order() -> None:
    snapshot = random_snapshot(random.Random(7), n_nodes=60, n_jobs=400)
    first = schedule(snapshot, now=0.0)
    assert schedule(snapshot, now=0.0) == first
    rng = random.Random(8)
    nodes, queue = list(snapshot.nodes), list(snapshot.queue)
    rng.shuffle(nodes)
    rng.shuffle(queue)
    assert schedule(Snapshot(nodes=tuple(nodes), queue=tuple(queue)), now=123.0) == first
    assert first.placements and first.waiting


# --- property checks on big random snapshots ------------------------------------------------


def random_snapshot(rng: random.Random, n_nodes: int, n_jobs: int, n_runs: int = 40) -> Snapshot:
    nets = ["home", "vpn", "public"]
    agents = ["aider", "claude", "codex"]
    nodes = []
    for k in range(n_nodes):
        slots = rng.choice([1, 2, 4, 8])
        cpus = rng.choice([2.0, 4.0, 8.0])
        gpus = rng.choice([0, 0, 0, 1, 2])
        used = rng.choice([0, 0, 0, 1, slots])
        nodes.append(
            N(
                f"id{k}",
                name=f"n{k % (n_nodes // 2 or 1):03d}",  # duplicate names exercise the id tie-break
                network=rng.choice(nets),
                labels={"role": rng.choice(["dev", "ci", "research"])},
                slots=slots,
                cpus=cpus,
                memory_mb=rng.choice([4096, 8192, 16384]),
                gpus=gpus,
                used_slots=used,
                used_cpus=min(cpus, used * 0.5),
                used_gpus=min(gpus, used),
                exclusive_busy=used == 1 and rng.random() < 0.1,
                run_counts={f"r{rng.randrange(n_runs)}": 1} if used else {},
                agents=frozenset(rng.sample(agents, rng.randint(0, 3))),
                load=rng.choice([0.0, 0.25, 0.5]),
            )
        )
    jobs = []
    for k in range(n_jobs):
        kw: dict[str, Any] = {
            "cpus": rng.choice([0.0, 0.3, 0.5, 1.0, 2.0, 3.0]),
            "memory_mb": rng.choice([0, 0, 1000, 3000]),
            "gpus": 1 if rng.random() < 0.1 else 0,
            "spread": rng.random() < 0.2,
            "exclusive": rng.random() < 0.03,
        }
        roll = rng.random()
        if roll < 0.15:
            kw["labels"] = {"role": rng.choice(["dev", "ci", "research", "nope"])}
        elif roll < 0.25:
            kw["networks"] = (rng.choice(nets),)
        elif roll < 0.3:
            kw["avoid_networks"] = ("public",)
        elif roll < 0.35:
            kw["agent_cli"] = rng.choice(agents)
        elif roll < 0.38:
            kw["node"] = rng.choice([f"id{rng.randrange(n_nodes + 5)}", f"n{rng.randrange(n_nodes):03d}"])
        # A few big runs (their own heaps) and many small ones.
        run = f"r{rng.randrange(4)}" if rng.random() < 0.5 else f"r{rng.randrange(n_runs)}"
        jobs.append(J(f"j{k}", run_id=run, order=float(rng.randrange(n_jobs // 2)), **kw))
    return Snapshot(nodes=tuple(nodes), queue=tuple(jobs))


def reference(snapshot: Snapshot) -> dict[str, str]:
    """The rules written as the naive scan over every node for every job."""
    free = {
        n.id: [
            n.slots - n.used_slots,
            n.cpus - n.used_cpus,
            n.memory_mb - n.used_memory_mb,
            n.gpus - n.used_gpus,
        ]
        for n in snapshot.nodes
    }
    used = {n.id: n.used_slots for n in snapshot.nodes}
    closed = {n.id: n.exclusive_busy for n in snapshot.nodes}
    runs: dict[tuple[str, str], int] = {(n.id, r): c for n in snapshot.nodes for r, c in n.run_counts.items()}
    out = {}
    for job in sorted(snapshot.queue, key=lambda j: (j.order, j.id)):
        best: tuple[Any, ...] | None = None
        for n in snapshot.nodes:
            slots, cpus, mem, gpus = free[n.id]
            count = runs.get((n.id, job.run_id), 0)
            ok = (
                not closed[n.id]
                and slots > 0
                and cpus + 1e-9 >= job.cpus
                and (job.memory_mb <= 0 or mem >= job.memory_mb)
                and gpus >= job.gpus
                and all(n.labels.get(k) == v for k, v in job.labels.items())
                and (not job.node or job.node in (n.id, n.name))
                and (not job.networks or n.network in job.networks)
                and n.network not in job.avoid_networks
                and (not job.exclusive or used[n.id] == 0)
                and (not job.agent_cli or job.agent_cli in n.agents)
                and (not job.spread or count == 0)
            )
            key = (count, used[n.id] / n.slots if n.slots else 0, n.load, n.name, n.id)
            if ok and (best is None or key < best):
                best = key
        if best is None:
            continue
        node_id = best[-1]
        out[job.id] = node_id
        free[node_id][0] -= 1
        free[node_id][1] -= job.cpus
        free[node_id][2] -= max(job.memory_mb, 0)
        free[node_id][3] -= job.gpus
        used[node_id] += 1
        closed[node_id] = closed[node_id] or job.exclusive
        runs[(node_id, job.run_id)] = runs.get((node_id, job.run_id), 0) + 1
    return out


def assert_no_overcommit(snapshot: Snapshot, plan: Plan) -> None:
    jobs = {j.id: j for j in snapshot.queue}
    for n in snapshot.nodes:
        mine = [jobs[p.job_id] for p in plan.placements if p.node_id == n.id]
        if not mine:
            continue
        assert not n.exclusive_busy, n.id
        assert n.used_slots + len(mine) <= n.slots, n.id
        assert n.used_cpus + sum(j.cpus for j in mine) <= n.cpus + 1e-6, n.id
        if any(j.memory_mb > 0 for j in mine):
            assert n.used_memory_mb + sum(j.memory_mb for j in mine) <= n.memory_mb, n.id
        assert n.used_gpus + sum(j.gpus for j in mine) <= n.gpus, n.id
        if any(j.exclusive for j in mine):
            assert n.used_slots == 0 and len(mine) == 1, n.id
        for k, j in enumerate(mine):  # placements come in pass order
            if j.spread:
                earlier = n.run_counts.get(j.run_id, 0) + sum(o.run_id == j.run_id for o in mine[:k])
                assert earlier == 0, (n.id, j.id)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_large_snapshot_never_overcommits(seed: int) -> None:
    snapshot = random_snapshot(random.Random(seed), n_nodes=200, n_jobs=2000)
    plan = schedule(snapshot, now=0.0)
    assert_no_overcommit(snapshot, plan)
    assert len(plan.placements) > 100
    placed_ids = [p.job_id for p in plan.placements]
    assert len(placed_ids) == len(set(placed_ids))
    assert set(placed_ids) | set(plan.waiting) == {j.id for j in snapshot.queue}
    assert not set(placed_ids) & set(plan.waiting)
    assert all(reason and "\n" not in reason for reason in plan.waiting.values())


@pytest.mark.parametrize(
    ("seed", "n_nodes", "n_jobs"),
    [(11, 5, 60), (12, 30, 300), (13, 200, 2000), (14, 400, 1500)],
    ids=["tiny", "small", "large", "roomy"],
)
def test_matches_naive_reference(seed: int, n_nodes: int, n_jobs: int) -> None:
    snapshot = random_snapshot(random.Random(seed), n_nodes=n_nodes, n_jobs=n_jobs)
    assert placed(schedule(snapshot, now=0.0)) == reference(snapshot)


@pytest.mark.parametrize(("seed", "n_nodes", "n_jobs"), [(21, 5, 60), (22, 200, 2000), (23, 400, 1500)])
def test_without_reasons_places_the_same(seed: int, n_nodes: int, n_jobs: int) -> None:
    snapshot = random_snapshot(random.Random(seed), n_nodes=n_nodes, n_jobs=n_jobs)
    quick = schedule(snapshot, now=0.0, explain=False)
    assert quick.placements == schedule(snapshot, now=0.0).placements
    assert quick.waiting == {}


def test_waiting_reasons_when_fleet_is_full() -> None:
    nodes = tuple(N(f"n{k}", slots=2, used_slots=2, agents=frozenset({"claude"})) for k in range(50))
    queue = (J("a", agent_cli="aider"), J("b"), J("c", gpus=1), J("d", node="n7"), J("e", exclusive=True))
    waiting: Mapping[str, str] = schedule(Snapshot(nodes=nodes, queue=queue), now=0.0).waiting
    assert waiting == {
        "a": "no node has agent CLI 'aider'",
        "b": "all matching nodes are busy (50 nodes, 0 free slots)",
        "c": "no matching node has 1 gpus in total (largest: 0)",
        "d": "all matching nodes are busy (1 nodes, 0 free slots)",
        "e": "all matching nodes are busy (50 nodes, 0 free slots)",
    }
