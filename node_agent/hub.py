"""Fan-out of node events to the coordinator sessions listening.

Starts, results and heartbeats always go out. Log lines are the one thing that may not:
with no coordinator connected, or one LOG_BACKLOG events behind, lines are counted
instead of queued. The next chunk of that attempt that does go out starts with a marker
saying how many are missing; the result counts them all (`log_lines_lost`), and says how
many of them were marked so (`log_lines_marked`). Memory stays bounded, a chatty job never costs the
session, and a gap in a log is never silent.

The hub is the session stream's edge: the runner hands it models and plain values, and
it builds the ``NodeEvent`` messages (through :mod:`node_agent.convert`).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from node_agent import convert
from node_agent.models import Result
from protos.flota.v1 import node_pb2

__all__ = ["Hub", "Subscription", "gap_marker"]

# Log events queued for one session before lines are counted instead (each event is at
# most 256 KiB, so a stalled session holds at most ~50 MiB).
LOG_BACKLOG = 200


def gap_marker(count: int) -> str:
    return f"[flota: {count} lines not delivered here (the coordinator was away or behind)]"


class Subscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[node_pb2.NodeEvent] = asyncio.Queue()
        self.logs_queued = 0

    def taken(self, event: node_pb2.NodeEvent) -> None:
        """The session sent `event` on: one less log event in the backlog."""
        if event.WhichOneof("kind") == "log":
            self.logs_queued -= 1


class Hub:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._seq = 0
        self._gap: defaultdict[str, int] = defaultdict(int)  # attempt id -> lines not delivered
        self._marked: defaultdict[str, int] = defaultdict(int)  # attempt id -> of those, marked
        self.alone = asyncio.Event()  # set while no session listens
        self.alone.set()

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subscribers.add(sub)
        self.alone.clear()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        if not self._subscribers:
            self.alone.set()

    @property
    def listening(self) -> int:
        return len(self._subscribers)

    def event(self, **kind: object) -> node_pb2.NodeEvent:
        self._seq += 1
        return node_pb2.NodeEvent(seq=self._seq, sent_at=time.time(), **kind)  # type: ignore[arg-type]

    def publish(self, **kind: object) -> None:
        """A start, result or heartbeat: goes to every session, never dropped."""
        event = self.event(**kind)
        for sub in self._subscribers:
            sub.queue.put_nowait(event)

    def started(self, job_id: str, attempt_id: str, started_at: float) -> None:
        self.publish(started=convert.started(job_id, attempt_id, started_at))

    def result(self, result: Result) -> None:
        self.publish(result=convert.result_to_proto(result))

    def log(self, job_id: str, attempt_id: str, lines: list[str]) -> None:
        ready = [s for s in self._subscribers if s.logs_queued < LOG_BACKLOG]
        if not ready:
            self._gap[attempt_id] += len(lines)
            return
        missing = self._gap.pop(attempt_id, 0)
        if missing:
            lines = [gap_marker(missing), *lines]
            self._marked[attempt_id] += missing
        event = self.event(log=node_pb2.LogLines(job_id=job_id, attempt_id=attempt_id, lines=lines))
        for sub in ready:
            sub.logs_queued += 1
            sub.queue.put_nowait(event)

    def take_gap(self, attempt_id: str) -> tuple[int, int]:
        """(lines of an ending attempt that never went out and were never marked, lines
        that never went out and were marked)."""
        return self._gap.pop(attempt_id, 0), self._marked.pop(attempt_id, 0)
