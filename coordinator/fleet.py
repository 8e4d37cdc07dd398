"""The fleet as the coordinator knows it: one entry per enrolled node, its liveness, and
what runs there. Plain data and pure rules; no I/O.

Liveness comes from the session's heartbeats (and gRPC keepalive closing the session
on a cut link), never from mDNS. States (models.NodeState):

    unknown      enrolled, never reached since this coordinator started
    online       session open, heartbeat within `unreachable_after`
    unreachable  no heartbeat for `unreachable_after`, or the session broke
    lost         unreachable for `lost_after`: its attempts are given up and retried
    offline      left gracefully (mDNS goodbye, then its session closed)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from coordinator.models import Job, LocalModel, NodeInfo, NodeState, NodeView, Reservation
from protos.contract import FLOTA_VERSION, OLDEST_PROTOCOL, PROTOCOL, node_protocol

__all__ = ["GOODBYE_WINDOW_S", "Fleet", "NodeEntry", "liveness", "node_view", "protocol_problem"]

GOODBYE_WINDOW_S = 10.0


@dataclass(slots=True)
class NodeEntry:
    id: str
    name: str
    state: NodeState = NodeState.UNKNOWN
    info: NodeInfo | None = None  # the node's last heartbeat
    last_seen: float = 0.0  # monotonic
    last_seen_wall: float = 0.0
    goodbye_at: float = 0.0  # monotonic; 0: none
    leaving: bool = False  # said so itself over mTLS: no new work until it reconnects
    fingerprint: str = ""  # of the certificate issued at enrollment
    removed: bool = False
    refused: str = ""  # why this coordinator will not take it (its protocol); "": it may
    draining: bool = False  # `flota node drain`: no new jobs, running ones finish
    # How long this node may be silent (it asked, e.g. a laptop that sleeps); 0: defaults.
    unreachable_after_s: float = 0.0
    lost_after_s: float = 0.0
    reservations: dict[str, Reservation] = field(default_factory=dict)  # attempt id -> what it holds

    @property
    def schedulable(self) -> bool:
        """Online, with facts, and willing: a node that said goodbye may still hold its
        session open, but takes no new work."""
        return (
            self.state == NodeState.ONLINE
            and self.info is not None
            and not self.leaving
            and not self.draining
        )

    @property
    def shown_state(self) -> str:
        """The state as `flota nodes` shows it."""
        return "draining" if self.draining and self.state == NodeState.ONLINE else self.state.value


def liveness(entry: NodeEntry, now: float, unreachable_after: float, lost_after: float) -> NodeState:
    """The state an entry should be in at `now`, from heartbeats alone. A node that
    holds attempts is lost after `lost_after` of silence whatever it said before."""
    if entry.state == NodeState.LOST or (
        entry.state in (NodeState.UNKNOWN, NodeState.OFFLINE) and not entry.reservations
    ):
        return entry.state
    silent = now - entry.last_seen
    if entry.state == NodeState.ONLINE and silent <= unreachable_after:
        return NodeState.ONLINE
    if silent > lost_after:
        return NodeState.LOST
    if entry.state in (NodeState.ONLINE, NodeState.UNREACHABLE):
        return NodeState.UNREACHABLE
    return entry.state


def node_view(entry: NodeEntry) -> NodeView:
    """What the scheduler sees of a schedulable node."""
    info = entry.info
    assert info is not None
    res = entry.reservations.values()
    run_counts: dict[str, int] = {}
    for r in res:
        run_counts[r.run_id] = run_counts.get(r.run_id, 0) + 1
    facts = info.facts
    cpus = facts.cpu_count or 1
    servers, free = model_capacity(facts.local_models, res)
    return NodeView(
        id=entry.id,
        name=entry.name,
        network=info.network,
        labels=info.labels,
        slots=info.slots,
        cpus=float(cpus),
        memory_mb=facts.memory_total_mb,
        gpus=len(facts.gpus),
        # The node's own count also covers attempts this coordinator gave up on.
        used_slots=max(len(entry.reservations), info.running),
        used_cpus=sum(r.cpus for r in res),
        used_memory_mb=sum(r.memory_mb for r in res),
        used_gpus=sum(r.gpus for r in res),
        exclusive_busy=any(r.exclusive for r in res),
        run_counts=run_counts,
        # What a job may require: an agent CLI, or a model this node serves locally.
        agents=frozenset([*facts.agent_clis, *(f"model:{m.model}" for m in facts.local_models)]),
        load=facts.load_1m / cpus,
        servers=servers,
        server_free=free,
    )


def model_capacity(
    models: Iterable[LocalModel], held: Iterable[Reservation]
) -> tuple[dict[str, str], dict[str, int]]:
    """NodeView's servers and server_free: which server each local model is on (those
    whose node said their slots) and how many of its slots the node's attempts leave."""
    servers = {f"model:{m.model}": m.api_base for m in models if m.slots > 0}
    free = {m.api_base: m.slots for m in models if m.slots > 0}
    for r in held:
        server = servers.get(r.requires)
        if server is not None:
            free[server] -= 1
    return servers, free


class Fleet:
    """Every enrolled node this coordinator knows, by id."""

    def __init__(self) -> None:
        self._entries: dict[str, NodeEntry] = {}

    def __iter__(self) -> Iterator[NodeEntry]:
        return iter(self._entries.values())

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries

    def __getitem__(self, node_id: str) -> NodeEntry:
        return self._entries[node_id]

    def get(self, node_id: str) -> NodeEntry | None:
        return self._entries.get(node_id)

    def add(self, node_id: str, name: str) -> NodeEntry:
        entry = self._entries.get(node_id)
        if entry is None:
            entry = self._entries[node_id] = NodeEntry(node_id, name)
        return entry

    def find(self, name_or_id: str) -> NodeEntry | None:
        """A node that has not been removed, by id or name."""
        return next((e for e in self if not e.removed and name_or_id in (e.id, e.name)), None)

    def names(self) -> dict[str, str]:
        return {e.id: e.name for e in self}

    def served_models(self) -> set[str]:
        return {m.model for e in self if e.info is not None for m in e.info.facts.local_models}

    def reserve(self, node_id: str, attempt_id: str, job: Job) -> None:
        entry = self._entries.get(node_id)
        if entry is not None:
            p = job.placement
            entry.reservations[attempt_id] = Reservation(
                job.run_id, p.cpus, p.memory_mb, p.gpus, p.exclusive, job.requires
            )

    def release(self, node_id: str, attempt_id: str) -> None:
        entry = self._entries.get(node_id)
        if entry is not None:
            entry.reservations.pop(attempt_id, None)


def protocol_problem(name: str, sent: int, version: str) -> str:
    """Why this coordinator will not take a node that speaks `sent` (its NodeInfo.protocol);
    "" when it may. One line, naming both versions and what to upgrade."""
    speaks = node_protocol(sent)
    if OLDEST_PROTOCOL <= speaks <= PROTOCOL:
        return ""
    said = (
        f"node {name} (flota {version or 'unknown'}) speaks protocol {speaks}; this coordinator "
        f"(flota {FLOTA_VERSION}) takes protocols {OLDEST_PROTOCOL} to {PROTOCOL}"
    )
    if speaks < OLDEST_PROTOCOL:
        return f"{said}: upgrade the node (flota node upgrade {name})"
    return f"{said}: upgrade the coordinator to flota {version or 'that version'} or later"
