"""One StreamEvents reader for every browser: the coordinator sees a dashboard as one
reader, however many pages are open.

The feed keeps the fleet as the stream last described it (every node, the runs, the jobs
it has seen) as JSON-ready dicts, the shapes of `flota --json events` (docs/cli.md,
"Events"). A page starts with that state in the stream's own words ("resync", the
"*.snapshot" events, "live"), then gets each event as it comes, as one JSON text made once
for all pages. A page that falls QUEUE messages behind gets a fresh snapshot instead, as a
reader of the coordinator does: a slow browser never holds the feed up.

Besides the coordinator's events a page hears "upstream" (whether the coordinator answers,
its error in one line) and, from the page's own stream, "clock" (the dashboard's time).
When the coordinator goes away the feed reconnects from the last index it saw, for good.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any

from cli.client import CliError
from cli.dashboard.coord import Coordinator
from cli.render import to_dict
from protos.flota.v1 import coordinator_pb2 as pb

__all__ = ["Feed", "Subscriber", "event_dict"]

QUEUE = 5_000  # messages a page may fall behind before it is sent a snapshot again
MAX_RUNS = 1_000  # runs kept; the oldest ended ones (and their jobs) go first
RECONNECT_S = (0.5, 1.0, 2.0, 5.0)


def event_dict(event: pb.Event) -> dict[str, Any]:
    data = to_dict(event)
    data["index"] = event.index  # an integer, not protobuf's string for 64 bits
    return data


class Subscriber:
    """One page's stream: the messages after its snapshot, bounded."""

    def __init__(self, limit: int = QUEUE) -> None:
        self.limit = limit
        self.behind = True  # it starts with a snapshot
        self._queue: deque[str] = deque()
        self._ready = asyncio.Event()

    def offer(self, text: str) -> None:
        if self.behind:
            return
        if len(self._queue) >= self.limit:
            self.resync()
        else:
            self._queue.append(text)
        self._ready.set()

    def resync(self) -> None:
        """What it holds is stale: it gets the whole state next."""
        self.behind = True
        self._queue.clear()
        self._ready.set()

    async def take(self, timeout: float) -> list[str] | None:
        """What has come (maybe nothing, after `timeout`); None: send it a snapshot."""
        if not self._queue and not self.behind:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                pass
        if self.behind:
            self.behind = False
            self._queue.clear()
            return None
        out = list(self._queue)
        self._queue.clear()
        return out


class _State:
    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}

    def apply(self, event: dict[str, Any]) -> None:
        if "node" in event:
            node = event["node"]
            if event["type"] == "node.removed":
                self.nodes.pop(node["info"]["id"], None)
            else:
                self.nodes[node["info"]["id"]] = node
        elif "run" in event:
            self.runs[event["run"]["id"]] = event["run"]
            if len(self.runs) > MAX_RUNS:
                self._forget_oldest()
        elif "job" in event:
            self.jobs[event["job"]["id"]] = event["job"]

    def _forget_oldest(self) -> None:
        ended = sorted((r for r in self.runs.values() if r.get("finished_at")), key=lambda r: r["created_at"])
        for run in ended[: len(self.runs) - MAX_RUNS]:
            del self.runs[run["id"]]
            for job_id in [j for j, job in self.jobs.items() if job["run_id"] == run["id"]]:
                del self.jobs[job_id]


class Feed:
    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self._state = _State()
        self._staging: _State | None = None  # a resync's snapshot, until its "live"
        self._subscribers: set[Subscriber] = set()
        self.index = 0
        self.upstream: dict[str, Any] = {"type": "upstream", "ok": False, "error": "connecting"}

    # --- pages ----------------------------------------------------------------------------

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    @property
    def pages(self) -> int:
        return len(self._subscribers)

    def snapshot(self) -> list[str]:
        """The state as the coordinator's stream says it: resync, snapshots, live."""
        at, index, s = time.time(), self.index, self._state
        out = [{"index": index, "type": "resync", "at": at}]
        out += [{"index": index, "type": "node.snapshot", "at": at, "node": n} for n in s.nodes.values()]
        out += [{"index": index, "type": "run.snapshot", "at": at, "run": r} for r in s.runs.values()]
        out += [{"index": index, "type": "job.snapshot", "at": at, "job": j} for j in s.jobs.values()]
        out += [{"index": index, "type": "live", "at": at}, self.upstream]
        return [json.dumps(m) for m in out]

    # --- the coordinator ------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the coordinator's stream for good, reconnecting from the last index."""
        waits = 0
        while True:
            try:
                async for event in self._coordinator.stream_events(self.index):
                    if not self.upstream["ok"]:
                        self._say_upstream(True, "")
                    waits = 0
                    self.take(event)
                error = "the coordinator ended the event stream"
            except CliError as exc:
                error = str(exc)
            self._staging = None
            self._say_upstream(False, error)
            await asyncio.sleep(RECONNECT_S[min(waits, len(RECONNECT_S) - 1)])
            waits += 1
            await self._coordinator.refresh()

    def take(self, event: pb.Event) -> None:
        if event.type == "resync":
            self._staging = _State()
            return
        data = event_dict(event)
        if self._staging is not None:
            if event.type != "live":
                self._staging.apply(data)
                return
            self._state, self._staging, self.index = self._staging, None, event.index
            for subscriber in self._subscribers:
                subscriber.resync()
            return
        self.index = event.index
        self._state.apply(data)
        self._send(json.dumps(data))

    def _say_upstream(self, ok: bool, error: str) -> None:
        self.upstream = {"type": "upstream", "ok": ok, "error": error, "at": time.time()}
        self._send(json.dumps(self.upstream))

    def _send(self, text: str) -> None:
        for subscriber in self._subscribers:
            subscriber.offer(text)
