"""The fleet's one event stream (StreamEvents): nodes, runs and jobs, in order, with an
index a reader can resume from (Nomad's /v1/event/stream is the model).

- Every change gets the next index. Indexes start at the wall clock in microseconds when
  the coordinator starts, so they grow across restarts too, and a reader's index from
  before a restart is recognised as one this process cannot replay.
- While anyone reads (and for RETAIN_S after the last reader left) the events are kept in a
  ring of KEEP, so a reader that reconnects with `since` gets each event it missed once, in
  order. With nobody reading, an event costs an integer increment: nothing is built.
- A reader that cannot be served from the ring (a first connect, an index too old or from
  another process) or that falls LIMIT events behind gets "resync", the current state as
  "*.snapshot" events, "live", then the events after. A slow reader never blocks the
  coordinator: its queue is bounded, and overflowing it only costs that reader a resync.
- Nodes have no single place where they change (liveness is a matter of time), so
  `watch_nodes` compares their status every NODE_POLL_S while the stream records: a change
  of state, slots, labels or version is "node.updated" at once; facts that move all the
  time (load, memory, battery) are "node.facts", at most every FACTS_EVERY_S per node.
- What a reader costs is what gRPC costs per message (a write, a syscall, a wake-up), not
  the event: each event is serialized once, when published, and every reader is sent those
  same bytes (the method's response serializer passes bytes through: api.add_to_server).
  A reader that asks for batches is sent at most a message every BATCH_EVERY_S: an event
  after a quiet spell goes at once, and what gathers meanwhile goes as one "batch" envelope
  (`frames`), so ten busy readers cost ten writes per BATCH_EVERY_S, not ten per event.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from coordinator.errors import InvalidRequest
from protos.flota.v1 import coordinator_pb2 as pb

__all__ = ["EventLog", "Item", "Reader", "Topics", "frames", "parse_topics", "watch_nodes"]

KEEP = 50_000  # events kept for replay
LIMIT = 10_000  # events a reader may fall behind before it is resynced
RETAIN_S = 300.0  # the ring is kept this long after the last reader left
NODE_POLL_S = 0.5
FACTS_EVERY_S = 5.0
MAX_TOPICS = 32
BATCH_EVERY_S = 0.05  # a batching reader's messages, at most one this often
BATCH_BYTES = 256 * 1024  # an envelope's events, at most (far below the 4 MiB message limit)
_TOPIC = re.compile(r"^(node|run|job)(?::([A-Za-z0-9][A-Za-z0-9._-]{0,79}))?\Z")


@dataclass(frozen=True, slots=True)
class Topics:
    """What a reader asked for: kind -> keys (an empty set: every one of that kind)."""

    kinds: dict[str, frozenset[str]] = field(default_factory=dict)

    def wants_kind(self, *kinds: str) -> bool:
        return not self.kinds or any(k in self.kinds for k in kinds)

    def wants(self, event: pb.Event) -> bool:
        if not self.kinds or event.type in ("resync", "live"):
            return True
        kind = event.WhichOneof("subject")
        if kind is None or kind not in self.kinds:
            return False
        keys = self.kinds[kind]
        if not keys:
            return True
        if kind == "node":
            return bool(keys & {event.node.info.name, event.node.info.id})
        if kind == "run":
            return event.run.id in keys
        return bool(keys & {event.job.id, event.job.run_id})


def parse_topics(items: Sequence[str]) -> Topics:
    if len(items) > MAX_TOPICS:
        raise InvalidRequest(f"at most {MAX_TOPICS} topics")
    whole: set[str] = set()  # kinds asked for without a key: every one of them
    keyed: dict[str, set[str]] = {}
    for item in items:
        m = _TOPIC.match(item)
        if m is None:
            raise InvalidRequest(f"invalid topic {item[:80]!r} (node, run or job, optionally :NAME or :ID)")
        if m.group(2) is None:
            whole.add(m.group(1))
        else:
            keyed.setdefault(m.group(1), set()).add(m.group(2))
    kinds = {k: frozenset(v) for k, v in keyed.items() if k not in whole}
    return Topics({**kinds, **{k: frozenset() for k in whole}})


Item = tuple[pb.Event, bytes]  # an event and its bytes on the wire, serialized once


def _item(event: pb.Event) -> Item:
    return event, event.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# An Event of type "batch" (field 2) holding events in `batch` (field 7, length-delimited):
# the protobuf encoding of `Event(type="batch", batch=[...])`, made from the events' bytes.
_BATCH_HEAD = b"\x12\x05batch"
_BATCH_TAG = b"\x3a"


def frames(datas: Sequence[bytes], batched: bool) -> list[bytes]:
    """The messages that carry these events: one each, or (`batched`) envelopes of up to
    BATCH_BYTES (an event alone goes as itself)."""
    if not batched or len(datas) < 2:
        return list(datas)
    out: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for data in datas:
        if group and size + len(data) > BATCH_BYTES:
            out.append(_envelope(group))
            group, size = [], 0
        group.append(data)
        size += len(data)
    out.append(_envelope(group))
    return out


def _envelope(group: list[bytes]) -> bytes:
    if len(group) == 1:
        return group[0]
    return _BATCH_HEAD + b"".join(_BATCH_TAG + _varint(len(d)) + d for d in group)


class Reader:
    """One StreamEvents call: the events published after it attached, bounded."""

    def __init__(
        self, topics: Topics, limit: int, every_s: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.topics = topics
        self.limit = limit
        self.behind = False
        self._queue: deque[Item] = deque()
        self._ready = asyncio.Event()
        self._every_s, self._clock = every_s, clock
        self._taken_at = -every_s

    def offer(self, item: Item) -> None:
        if self.behind or not self.topics.wants(item[0]):
            return
        if len(self._queue) >= self.limit:
            self.behind = True  # the stream resyncs it; what it holds is stale
            self._queue.clear()
        else:
            self._queue.append(item)
        self._ready.set()

    def resume(self) -> None:
        """After a resync: take events again, from now."""
        self.behind = False
        self._queue.clear()

    async def take(self) -> list[bytes] | None:
        """Every event queued (waiting for one, and then until `every_s` after the last
        take), as bytes; None when this reader fell behind (resync it)."""
        while not self._queue:
            if self.behind:
                return None
            self._ready.clear()
            await self._ready.wait()
        linger = self._taken_at + self._every_s - self._clock()
        if linger > 0:
            await asyncio.sleep(linger)
            if self.behind:
                return None
        self._taken_at = self._clock()
        taken = [data for _, data in self._queue]
        self._queue.clear()
        return taken


class EventLog:
    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        keep: int = KEEP,
        limit: int = LIMIT,
        retain_s: float = RETAIN_S,
    ) -> None:
        self._wall, self._clock = wall, clock
        self._limit, self._retain_s = limit, retain_s
        self.index = int(wall() * 1_000_000)
        self._ring: deque[Item] = deque(maxlen=keep)
        self._readers: set[Reader] = set()
        self._left_at: float | None = None  # when the last reader left; None: never read
        self._from = self.index + 1  # the first index the ring can replay from

    @property
    def recording(self) -> bool:
        if self._readers:
            return True
        return self._left_at is not None and self._clock() - self._left_at < self._retain_s

    def publish(self, kind: str, build: Callable[[], pb.Event]) -> None:
        """The next event: `build` makes it (its subject), only when someone may read it."""
        self.index += 1
        if not self.recording:
            return
        event = build()
        event.index, event.type, event.at = self.index, kind, self._wall()
        item = _item(event)
        self._ring.append(item)
        for reader in self._readers:
            reader.offer(item)

    def attach(self, topics: Topics, batched: bool = False) -> Reader:
        """A reader; `batched`: one that takes its events BATCH_EVERY_S at a time."""
        if not self.recording:  # a new recording: nothing before it can be replayed
            self._ring.clear()
            self._from = self.index + 1
        reader = Reader(topics, self._limit, BATCH_EVERY_S if batched else 0.0, self._clock)
        self._readers.add(reader)
        return reader

    def detach(self, reader: Reader) -> None:
        self._readers.discard(reader)
        if not self._readers:
            self._left_at = self._clock()

    def replay(self, since: int) -> list[Item] | None:
        """The kept events after `since`, or None when they cannot all be given (resync)."""
        if since < self._from - 1 or since > self.index:
            return None
        if self._ring and self._ring[0][0].index > since + 1:
            return None  # the ring has dropped some already
        return [item for item in self._ring if item[0].index > since]

    def snapshot(
        self, nodes: Iterable[pb.NodeStatus], runs: Iterable[pb.Run], jobs: Iterable[pb.Job], topics: Topics
    ) -> list[Item]:
        """resync, the current state, live: all at the current index (a reader that
        resumes from it gets exactly what follows)."""
        at, index = self._wall(), self.index
        out = [pb.Event(index=index, type="resync", at=at)]
        out += [pb.Event(index=index, type="node.snapshot", at=at, node=n) for n in nodes]
        out += [pb.Event(index=index, type="run.snapshot", at=at, run=r) for r in runs]
        out += [pb.Event(index=index, type="job.snapshot", at=at, job=j) for j in jobs]
        out.append(pb.Event(index=index, type="live", at=at))
        return [_item(e) for e in out if topics.wants(e)]


def _steady(status: pb.NodeStatus) -> bytes:
    """A node's status without what moves all the time: a change here is news."""
    copy = pb.NodeStatus()
    copy.CopyFrom(status)
    copy.ClearField("last_seen")
    copy.info.ClearField("facts")
    return copy.SerializeToString(deterministic=True)


async def watch_nodes(
    log: EventLog, statuses: Callable[[], list[pb.NodeStatus]], clock: Callable[[], float] = time.monotonic
) -> None:
    """Publish node changes while the stream records (see the module's docstring)."""
    known: dict[str, _Seen] = {}
    was_recording = False
    while True:
        await asyncio.sleep(NODE_POLL_S)
        if not log.recording:
            was_recording = False
            continue
        now = clock()
        current = {s.info.id: s for s in statuses()}
        if not was_recording:  # a new recording starts from the nodes as they are (its snapshot)
            known = {i: _Seen(s, now) for i, s in current.items()}
            was_recording = True
            continue
        for node_id, status in current.items():
            seen, before = _Seen(status, now), known.get(node_id)
            if before is None:
                kind = "node.joined"
            elif before.steady != seen.steady:
                kind = "node.updated"
            elif before.facts != seen.facts and now - before.at >= FACTS_EVERY_S:
                kind = "node.facts"
            else:
                continue
            log.publish(kind, lambda s=status: pb.Event(node=s))  # type: ignore[misc]
            known[node_id] = seen
        for node_id in known.keys() - current.keys():
            gone = known.pop(node_id).status
            gone.state = "removed"
            log.publish("node.removed", lambda s=gone: pb.Event(node=s))  # type: ignore[misc]


class _Seen:
    """A node's status as last published."""

    __slots__ = ("at", "facts", "status", "steady")

    def __init__(self, status: pb.NodeStatus, at: float) -> None:
        self.status, self.at = status, at
        self.steady = _steady(status)
        self.facts = status.info.facts.SerializeToString(deterministic=True)
