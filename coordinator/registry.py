"""What the coordinator knows about each enrolled node, and when it last heard from it.

Liveness comes from the session's heartbeats (and gRPC keepalive closing the session
on a cut link), never from mDNS. States:

    unknown      enrolled, never reached since this coordinator started
    online       session open, heartbeat within `unreachable_after`
    unreachable  no heartbeat for `unreachable_after`, or the session broke
    lost         unreachable for `lost_after`: its attempts are given up and retried
    offline      left gracefully (mDNS goodbye, then its session closed)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protos.flota.v1 import types_pb2

__all__ = ["NodeEntry", "liveness"]

GOODBYE_WINDOW_S = 10.0


@dataclass(slots=True)
class NodeEntry:
    id: str
    name: str
    state: str = "unknown"
    info: types_pb2.NodeInfo | None = None  # the node's last heartbeat, shown as is
    last_seen: float = 0.0  # monotonic
    last_seen_wall: float = 0.0
    goodbye_at: float = 0.0  # monotonic; 0: none
    leaving: bool = False  # said so itself over mTLS: no new work until it reconnects
    fingerprint: str = ""  # of the certificate issued at enrollment
    removed: bool = False
    draining: bool = False  # `flota node drain`: no new jobs, running ones finish
    # How long this node may be silent (it asked, e.g. a laptop that sleeps); 0: defaults.
    unreachable_after_s: float = 0.0
    lost_after_s: float = 0.0
    # attempt id -> (run id, cpus, memory_mb, gpus, exclusive): what runs there now
    reservations: dict[str, tuple[str, float, int, int, bool]] = field(default_factory=dict)


def liveness(entry: NodeEntry, now: float, unreachable_after: float, lost_after: float) -> str:
    """The state an entry should be in at `now`, from heartbeats alone. A node that
    holds attempts is lost after `lost_after` of silence whatever it said before."""
    if entry.state == "lost" or (entry.state in ("unknown", "offline") and not entry.reservations):
        return entry.state
    silent = now - entry.last_seen
    if entry.state == "online" and silent <= unreachable_after:
        return "online"
    if silent > lost_after:
        return "lost"
    return "unreachable" if entry.state in ("online", "unreachable") else entry.state
