"""Place queued jobs on nodes: `schedule(snapshot, now) -> Plan`, a pure function.

Rules (every node in the snapshot is online and schedulable; the caller filters):

1. Jobs go in `JobView.order` order, ties by id; a placement consumes the node's
   slot, cpus, memory, gpus and run count for the rest of the pass.
2. Static filters ("can never fit"), in order: pin (node id or name; a pin to a node
   in `Snapshot.unavailable` waits with the reason given there), allowed
   networks, avoided networks, labels, agent CLI, total cpus / memory / gpus.
3. Dynamic filters ("busy right now"), in order: a free slot on a node that is not
   `exclusive_busy`; for a job that requires a local model ("model:<m>"), a free slot
   on the node's server of that model (`NodeView.server_free`, shared by the server's
   models; a placement takes one); free cpus (small epsilon), memory (if asked), gpus; an idle
   node for an exclusive job, which then closes it for the pass; for a hard-spread
   job, no job of its run on the node.
4. Then: fewest jobs of the same run (soft spread), least busy (used_slots / slots),
   lowest load, name, id.
5. A job left over gets one line in `Plan.waiting`: the reason of the first filter
   above that leaves no candidate, judged on the state at the end of the pass. With
   `explain=False` there are no reasons, and the pass stops once the fleet is full:
   its cost is then that of the jobs it places, not of the whole queue.

`now` is in the contract so time-based rules (ageing, back-off) need no new callers;
no rule reads it yet.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Mapping, Sequence

from coordinator.models import JobView, NodeView, Placement, Plan, Snapshot

__all__ = ["schedule"]

# Cpus are floats summed job by job; without slack 0.1 * 3 would not fit in 0.3.
_EPS = 1e-9

# (sorted labels, pin, networks, avoided networks, agent CLI): jobs that share it
# see the same statically eligible nodes.
_Key = tuple[tuple[tuple[str, str], ...], str, tuple[str, ...], tuple[str, ...], str]
# (exclusive, cpus, memory, gpus) rounded down: a lower bound on what a job needs.
_Class = tuple[bool, float, float, float]
_Entry = tuple[int, float, int]  # (jobs of the run, used/slots, node rank)
_BASE: _Class = (False, 0.0, 0.0, 0.0)
# Per static key, end of pass: members, those with a free slot, totals, smallest totals.
_Facts = tuple[list[int], list[int], list[tuple[float, int, int]], list[float]]
_HAS = ("{:g} cpus", "{:g} MB of memory", "{:g} gpus")
_FREE = ("{:g} free cpus", "{:g} MB of free memory", "{:g} free gpus")


def _key(job: JobView) -> _Key:
    labels = tuple(sorted(job.labels.items())) if job.labels else ()
    return (labels, job.node, job.networks, job.avoid_networks, job.agent_cli)


@functools.lru_cache(maxsize=4096)  # a queue asks for few distinct sizes
def _floor2(x: float) -> float:
    # Powers of two keep the number of narrowed heaps small for odd-sized jobs.
    return 0.0 if x <= 0 else 2.0 ** math.floor(math.log2(x))


def _matches(node: NodeView, key: _Key) -> bool:
    labels, pin, networks, avoid, agent = key
    return (
        (not pin or node.id == pin or node.name == pin)
        and (not networks or node.network in networks)
        and node.network not in avoid
        and all(node.labels.get(k) == v for k, v in labels)
        and (not agent or agent in node.agents)
    )


def _static_reason(st: _State, key: _Key) -> str:
    labels, pin, networks, avoid, agent = key
    if pin and pin not in st.by_pin:
        return st.unavailable.get(pin) or f"no node named {pin!r}"
    nodes = [st.nodes[i] for i in st.by_pin[pin]] if pin else st.nodes
    if not nodes:
        return "no nodes are online"
    # Add the key's parts one at a time; the first that leaves no node is the reason.
    steps: list[tuple[_Key, str]] = [
        (((), pin, networks, (), ""), f"no node on network {' or '.join(networks)}"),
        (((), pin, networks, avoid, ""), f"all matching nodes are on avoided networks ({', '.join(avoid)})"),
        *(
            ((labels[: k + 1], pin, networks, avoid, ""), f"no node with label {kv[0]}={kv[1]}")
            for k, kv in enumerate(labels)
        ),
        (
            key,
            f"no node serves model {agent[6:]}"
            if agent.startswith("model:")
            else f"no node has agent CLI {agent!r}",
        ),
    ]
    for partial, reason in steps:
        if not any(_matches(n, partial) for n in nodes):
            return reason
    return "no node matches"  # unreachable: members() found none with the full key


class _State:
    """Per-pass counters in plain lists; a node's index is its tie-break rank."""

    def __init__(self, nodes: Sequence[NodeView], runs: set[str], unavailable: Mapping[str, str]) -> None:
        self.nodes = nodes
        self.unavailable = unavailable
        self.slots = [n.slots for n in nodes]
        self.used = [n.used_slots for n in nodes]
        self.cpu = [n.cpus - n.used_cpus for n in nodes]
        self.mem = [n.memory_mb - n.used_memory_mb for n in nodes]
        self.gpu = [n.gpus - n.used_gpus for n in nodes]
        self.closed = [n.exclusive_busy for n in nodes]
        self.servers = [n.servers for n in nodes]
        self.server_free = [dict(n.server_free) for n in nodes]
        self.sizes = [(n.cpus, n.memory_mb, n.gpus) for n in nodes]  # each host's totals
        # Lets the pass stop looking once the whole fleet is full.
        self.free_total = sum(max(n.slots - n.used_slots, 0) for n in nodes if not n.exclusive_busy)
        # run id -> {node rank: jobs of that run}; runs absent from the queue never matter.
        self.runs: dict[str, dict[int, int]] = {}
        self.by_pin: dict[str, list[int]] = {}
        # Node ranks by what a key can ask for: members() intersects sets, not nodes.
        self.by_label: dict[tuple[str, str], set[int]] = {}
        self.by_network: dict[str, set[int]] = {}
        self.by_agent: dict[str, set[int]] = {}
        for i, n in enumerate(nodes):
            for run, count in n.run_counts.items():
                if count > 0 and run in runs:
                    self.runs.setdefault(run, {})[i] = count
            for pin in {n.id, n.name}:
                self.by_pin.setdefault(pin, []).append(i)
            for pair in n.labels.items():
                self.by_label.setdefault(pair, set()).add(i)
            self.by_network.setdefault(n.network, set()).add(i)
            for agent in n.agents:
                self.by_agent.setdefault(agent, set()).add(i)
        self.members_of: dict[_Key, list[int]] = {}

    def members(self, key: _Key) -> list[int]:
        """Statically eligible node ranks, ascending (what `_matches` accepts)."""
        found = self.members_of.get(key)
        if found is None:
            labels, pin, networks, avoid, agent = key
            ranks = set(self.by_pin.get(pin, ())) if pin else set(range(len(self.nodes)))
            if networks:
                ranks &= set().union(*(self.by_network.get(n, ()) for n in networks))
            for net in avoid:
                ranks -= self.by_network.get(net, set())
            for pair in labels:
                ranks &= self.by_label.get(pair, set())
            if agent:
                ranks &= self.by_agent.get(agent, set())
            found = self.members_of[key] = sorted(ranks)
        return found

    def open(self, i: int, excl: bool, cpus: float, mem: float, gpus: float) -> bool:
        used = self.used[i]
        return (
            not self.closed[i]
            and used < self.slots[i]
            and (not excl or used == 0)
            and self.cpu[i] + _EPS >= cpus
            and (mem <= 0 or self.mem[i] >= mem)
            and self.gpu[i] >= gpus
        )

    def model_full(self, i: int, requires: str) -> bool:
        """Node i's server of the model `requires` names has no free slot."""
        server = self.servers[i].get(requires)
        return server is not None and self.server_free[i][server] <= 0

    def place(self, i: int, job: JobView) -> None:
        server = self.servers[i].get(job.agent_cli)
        if server is not None:
            self.server_free[i][server] -= 1
        self.used[i] += 1
        self.cpu[i] -= job.cpus
        if job.memory_mb > 0:
            self.mem[i] -= job.memory_mb
        self.gpu[i] -= job.gpus
        counts = self.runs.setdefault(job.run_id, {})
        counts[i] = counts.get(i, 0) + 1
        self.free_total -= 1
        if job.exclusive:
            self.closed[i] = True
            self.free_total -= max(self.slots[i] - self.used[i], 0)


class _Heap:
    """Candidate nodes of one static key, keyed (run count, used/slots, rank).

    Keys only grow during a pass, so an entry is a lower bound: a stale one is
    refreshed when it surfaces, and a node that no longer passes `cls` never will
    again and is dropped. One base heap per static key serves every job of that
    key; jobs skip nodes that do not fit them or (soft spread) already hold their
    run. When skipping for one class or run has cost about as much as a heap, that
    class or run gets its own narrowed heap in `kids`, so no job rescans the fleet.
    """

    def __init__(self, cls: _Class, run: str, items: list[_Entry]) -> None:
        self.cls, self.run, self.items = cls, run, items
        heapq.heapify(items)
        self.kids: dict[_Class | str, _Heap] = {}
        self.spent: dict[_Class | str, int] = {}

    def grow(self, st: _State, kid: _Class | str, cost: int) -> None:
        spent = self.spent[kid] = self.spent.get(kid, 0) + cost
        if spent <= len(self.items) + 8:
            return
        if isinstance(kid, str):
            counts = st.runs.get(kid, {})
            self.kids[kid] = _Heap(self.cls, kid, [(counts.get(i, 0), r, i) for _, r, i in self.items])
        else:
            self.kids[kid] = _Heap(kid, "", [e for e in self.items if st.open(e[2], *kid)])

    def pick(self, st: _State, job: JobView, counts: dict[int, int]) -> tuple[int, int, int]:
        """(best node rank or -1, nodes skipped for holding the run, nodes skipped as too small)."""
        items, by_run = self.items, bool(self.run)
        # st.open() twice, inlined with local names: this loop is the pass's hot spot.
        closed, used, slots, cpu, mem, gpu = st.closed, st.used, st.slots, st.cpu, st.mem, st.gpu
        c_excl, c_cpus, c_mem, c_gpus = self.cls
        j_excl, j_cpus, j_mem, j_gpus = job.exclusive, job.cpus, job.memory_mb, job.gpus
        j_model = job.agent_cli if job.agent_cli.startswith("model:") else ""
        small: list[_Entry] = []
        held: list[_Entry] = []
        best = -1
        while items:
            top = items[0]
            i = top[2]
            u = used[i]
            if (
                closed[i]
                or u >= slots[i]
                or (c_excl and u)
                or cpu[i] + _EPS < c_cpus
                or (c_mem > 0 and mem[i] < c_mem)
                or gpu[i] < c_gpus
            ):
                heapq.heappop(items)  # no longer fits the heap's class: never will this pass
                continue
            fresh = (counts.get(i, 0) if by_run else 0, u / slots[i], i)
            if fresh != top:
                heapq.heapreplace(items, fresh)
            elif (
                (j_excl and u)
                or cpu[i] + _EPS < j_cpus
                or (j_mem > 0 and mem[i] < j_mem)
                or gpu[i] < j_gpus
                or (j_model and st.model_full(i, j_model))
            ):
                small.append(heapq.heappop(items))
            elif not by_run and i in counts:
                held.append(heapq.heappop(items))
            else:
                # A run heap's top has the fewest jobs of the run; hard spread wants none.
                best = -1 if job.spread and fresh[0] > 0 else i
                break
        if best < 0 and held and not job.spread:
            # Every fitting node holds the run already; the held entries are fresh.
            best = min((counts[i], r, i) for _, r, i in held)[2]
        for entry in small + held:
            heapq.heappush(items, entry)
        return best, len(held), len(small)


def _big_enough(totals: list[tuple[float, int, int]], needs: tuple[float, int, int]) -> str | int:
    """How many hosts have `needs` in total, or why none has: the first dimension (cpus,
    memory, gpus) that no host big enough in the dimensions before it has enough of."""
    for d, what in enumerate(_HAS):
        if needs[d] > 0:
            kept = [t for t in totals if t[d] + _EPS >= needs[d]]
            if not kept:
                most = max(t[d] for t in totals)
                return f"no matching node has {what.format(needs[d])} in total (largest: {most:g})"
            totals = kept
    return len(totals)


def _explain(
    st: _State,
    job: JobView,
    key: _Key,
    facts: dict[_Key, _Facts],
    facts_sized: dict[tuple[_Key, tuple[float, int, int]], str | int],
) -> str:
    """Why `job` waits, judged on the state at the end of the pass."""
    if key not in facts:
        members = st.members(key)
        closed, used, slots, sizes = st.closed, st.used, st.slots, st.sizes
        free = [i for i in members if not closed[i] and used[i] < slots[i]]
        totals = [sizes[i] for i in members]
        facts[key] = (members, free, totals, [min(t) for t in zip(*totals, strict=True)])
    members, left, totals, lows = facts[key]
    if not members:
        return _static_reason(st, key)
    needs = job.cpus, job.memory_mb, job.gpus
    matching = len(members)
    if any(need > low + _EPS for need, low in zip(needs, lows, strict=True)):
        # Only jobs bigger than some matching host pay for this scan, once per key and
        # size; name the first dimension that no matching host has enough of at all.
        sized = facts_sized.get((key, needs))
        if sized is None:
            sized = facts_sized[(key, needs)] = _big_enough(totals, needs)
        if isinstance(sized, str):
            return sized
        matching = sized
    if not left:
        if all(st.closed[i] for i in members):
            return f"every matching node runs an exclusive job ({matching} nodes)"
        return f"all matching nodes are busy ({matching} nodes, 0 free slots)"
    if job.agent_cli.startswith("model:"):
        left = [i for i in left if not st.model_full(i, job.agent_cli)]
        if not left:
            return f"every slot of the model servers of {job.agent_cli[6:]} is in use ({matching} nodes)"
    frees: tuple[Sequence[float], ...] = (st.cpu, st.mem, st.gpu)
    for need, have, what in zip(needs, frees, _FREE, strict=True):
        if need > 0:
            left = [i for i in left if have[i] + _EPS >= need]
            if not left:
                return f"no node with {what.format(need)} right now ({matching} matching nodes are busy)"
    if job.exclusive:
        left = [i for i in left if st.used[i] == 0]
        if not left:
            return "waiting for an idle node (exclusive)"
    counts = st.runs.get(job.run_id, {})
    if job.spread and all(i in counts for i in left):
        return "every matching node already runs a job of this run (spread)"
    return "no suitable node right now"  # not expected: a job that fits somewhere is placed


def schedule(snapshot: Snapshot, now: float, explain: bool = True) -> Plan:
    """Place as much of `snapshot.queue` as fits; say why the rest waits (if `explain`)."""
    # Sorting once makes a node's index its static tie-break rank (load, name, id).
    nodes = sorted(snapshot.nodes, key=lambda n: (n.load, n.name, n.id))
    queue = sorted(snapshot.queue, key=lambda j: (j.order, j.id))
    st = _State(nodes, {j.run_id for j in queue}, snapshot.unavailable)
    bases: dict[_Key, _Heap] = {}
    placements: list[Placement] = []
    left_over: list[tuple[JobView, _Key]] = []
    # The state only shrinks during a pass: once a job found no node, a later one with
    # the same key and needs finds none either (hard spread aside: it depends on the run).
    missed: set[tuple[_Key, bool, float, int, int]] = set()

    for job in queue:
        if st.free_total <= 0:
            if not explain:
                break
            left_over.append((job, _key(job)))  # the fleet is full: no need to look
            continue
        key = _key(job)
        needs = (key, job.exclusive, job.cpus, job.memory_mb, job.gpus)
        if needs in missed:
            if explain:
                left_over.append((job, key))
            continue
        base = bases.get(key)
        if base is None:
            used, slots, closed, cpu, gpu = st.used, st.slots, st.closed, st.cpu, st.gpu
            items = [  # st.open(i, *_BASE), inlined: this runs for every node of every key
                (0, used[i] / slots[i], i)
                for i in st.members(key)
                if not closed[i] and used[i] < slots[i] and cpu[i] + _EPS >= 0 and gpu[i] >= 0
            ]
            base = bases[key] = _Heap(_BASE, "", items)
        cls = (job.exclusive, _floor2(job.cpus), _floor2(job.memory_mb), _floor2(job.gpus))
        heap = base.kids.get(cls, base)
        heap = heap.kids.get(job.run_id, heap)
        i, run_skips, small_skips = heap.pick(st, job, st.runs.get(job.run_id, {}))
        if small_skips and heap.cls != cls:
            base.grow(st, cls, small_skips)
        if run_skips:
            heap.grow(st, job.run_id, run_skips)
        if i < 0:
            if not job.spread:
                missed.add(needs)
            if explain:
                left_over.append((job, key))
            continue
        st.place(i, job)
        placements.append(Placement(job_id=job.id, node_id=nodes[i].id))

    waiting: dict[str, str] = {}
    # The state only shrinks during a pass, so one end-of-pass reason per signature
    # holds for every job that shares it.
    reasons: dict[tuple[object, ...], str] = {}
    facts: dict[_Key, _Facts] = {}
    sized: dict[tuple[_Key, tuple[float, int, int]], str | int] = {}
    for job, key in left_over:
        sig: tuple[object, ...] = (key,)  # a static reason holds for the whole key
        if st.members(key):
            sig = (key, job.exclusive, job.cpus, job.memory_mb, job.gpus, job.run_id if job.spread else "")
        if sig not in reasons:
            reasons[sig] = _explain(st, job, key, facts, sized)
        waiting[job.id] = reasons[sig]
    return Plan(placements=tuple(placements), waiting=waiting)
