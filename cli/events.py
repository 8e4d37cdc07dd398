"""`flota events`: the fleet's event stream, as lines for people or NDJSON for scripts.

It follows the stream until Ctrl-C (or, with `--snapshot`, prints the current state and
stops). When the coordinator goes away it reconnects from the last index it printed, so a
restarted coordinator's resync, or the events it kept, carry on where it left off.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated

import typer

from cli.client import EXIT_UNAVAILABLE, Client, CliError, Stream
from cli.options import options
from cli.render import to_dict
from protos.flota.v1 import coordinator_pb2 as pb

__all__ = ["Follower", "describe", "events"]

RECONNECT_S = (0.5, 1.0, 2.0, 5.0)  # waits between reconnects, the last one repeated
GIVE_UP_S = 60.0  # a coordinator gone this long ends the command (exit 3)


def describe(event: pb.Event) -> str:
    """One line: index, time, type, subject."""
    when = datetime.fromtimestamp(event.at).strftime("%H:%M:%S") if event.at else "--:--:--"
    subject = event.WhichOneof("subject")
    what = ""
    if subject == "node":
        n = event.node
        what = f"{n.info.name or n.info.id} {n.state} {n.info.running}/{n.info.slots} slots"
        what += f" {n.info.network}" if n.info.network else ""
    elif subject == "run":
        what = f"{event.run.id} {event.run.status} {event.run.name}".rstrip()
    elif subject == "job":
        j = event.job
        where = f" on {j.node_name}" if j.node_name else ""
        note = (
            j.wait_reason
            if j.status in ("queued", "waiting")
            else (j.result.error if j.HasField("result") else "")
        )
        what = f"{j.id} {j.status}{where} {j.name}" + (f" ({note})" if note else "")
    return f"{event.index} {when} {event.type:<14} {what}".rstrip()


def events(
    ctx: typer.Context,
    since: Annotated[
        int, typer.Option(metavar="INDEX", help="Resume after this index (0: the current state first).")
    ] = 0,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic", "-t", metavar="TOPIC", help="node, run or job, optionally :NAME or :ID; repeatable."
        ),
    ] = None,
    snapshot: Annotated[bool, typer.Option(help="Print the current state, then stop.")] = False,
) -> None:
    """Follow everything that happens in the fleet: nodes, runs, jobs (NDJSON with --json)."""
    o = options(ctx)

    def retrying(error: CliError, wait: float) -> None:
        print(f"flota: {error}; reconnecting in {wait:g} s", file=sys.stderr, flush=True)

    for event in Follower(o.client, since, topic or [], retrying):
        _print(event, o.json)
        if snapshot and event.type == "live":
            return


class Follower:
    """The event stream, followed across coordinator restarts: iterate it for events;
    `cancel()` (from any thread) ends the iteration. A coordinator that cannot be reached
    is tried again from the last index given (`on_retry` hears of each wait) until it has
    been gone GIVE_UP_S; then the CliError is raised."""

    def __init__(
        self,
        connect: Callable[[], Client],
        since: int = 0,
        topics: list[str] | None = None,
        on_retry: Callable[[CliError, float], None] | None = None,
    ) -> None:
        self._connect, self.last, self._topics = connect, since, topics or []
        self._on_retry = on_retry
        self._stream: Stream[pb.Event] | None = None
        self._stopped = threading.Event()

    def __iter__(self) -> Iterator[pb.Event]:
        waits, gone_since = 0, 0.0
        while not self._stopped.is_set():
            client = self._connect()  # anew each time: a local coordinator may come back on another port
            try:
                self._stream = client.stream_events(self.last, self._topics)
                if self._stopped.is_set():
                    return
                for event in self._stream:
                    waits, gone_since = 0, 0.0
                    self.last = event.index
                    yield event
            except CliError as exc:
                if exc.code != EXIT_UNAVAILABLE or self._stopped.is_set():
                    raise
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > GIVE_UP_S:
                    raise
                wait = RECONNECT_S[min(waits, len(RECONNECT_S) - 1)]
                if self._on_retry is not None:
                    self._on_retry(exc, wait)
                self._stopped.wait(wait)
                waits += 1
            finally:
                client.close()

    def cancel(self) -> None:
        self._stopped.set()
        if self._stream is not None:
            self._stream.cancel()


def _print(event: pb.Event, as_json: bool) -> None:
    if as_json:
        data = to_dict(event)
        data["index"] = event.index  # an integer, not protobuf's string for 64 bits
        print(json.dumps(data), flush=True)
    else:
        print(describe(event), flush=True)
