"""Fan-out of node events to the coordinator sessions listening."""

from __future__ import annotations

import asyncio
import time

from protos.flota.v1 import node_pb2

__all__ = ["Hub", "Subscription"]

QUEUE_LIMIT = 10_000


class Subscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[node_pb2.NodeEvent] = asyncio.Queue()
        self.overflowed = False


class Hub:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._seq = 0

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    @property
    def listening(self) -> int:
        return len(self._subscribers)

    def event(self, **kind: object) -> node_pb2.NodeEvent:
        self._seq += 1
        return node_pb2.NodeEvent(seq=self._seq, sent_at=time.time(), **kind)  # type: ignore[arg-type]

    def publish(self, **kind: object) -> None:
        event = self.event(**kind)
        for sub in list(self._subscribers):
            if sub.queue.qsize() >= QUEUE_LIMIT:
                # A session that cannot keep up is closed; the coordinator reconnects and
                # reads results from ListJobs, so only log lines are lost.
                sub.overflowed = True
                self._subscribers.discard(sub)
            sub.queue.put_nowait(event)
