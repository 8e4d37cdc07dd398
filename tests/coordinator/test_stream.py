"""coordinator/stream.py: the event log's indexes, replay, topics and bounded readers."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.errors import InvalidRequest
from coordinator.stream import BATCH_BYTES, EventLog, frames, parse_topics
from protos.flota.v1 import coordinator_pb2 as pb


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def job(job_id: str) -> pb.Event:
    return pb.Event(job=pb.Job(id=job_id, run_id=job_id.partition(".")[0]))


def test_nothing_is_built_while_nobody_reads_but_indexes_move_on() -> None:
    log = EventLog(wall=lambda: 1_000.0, clock=Clock())
    start = log.index
    assert start == 1_000 * 1_000_000  # the wall clock in microseconds: it grows across restarts

    def boom() -> pb.Event:
        raise AssertionError("built with no reader")

    log.publish("job.queued", boom)
    assert log.index == start + 1


def test_replay_gives_each_missed_event_once_in_order() -> None:
    clock = Clock()
    log = EventLog(wall=lambda: 1.0, clock=clock, retain_s=60)
    first = log.attach(parse_topics([]))
    for i in range(5):
        log.publish("job.running", lambda i=i: job(f"r{i}.1"))  # type: ignore[misc]
    seen = [first._queue.popleft()[0] for _ in range(2)]
    log.detach(first)  # the reader's connection drops after two events
    clock.now += 30  # within the retention
    for i in range(5, 8):
        log.publish("job.running", lambda i=i: job(f"r{i}.1"))  # type: ignore[misc]
    again = log.attach(parse_topics([]))
    items = log.replay(seen[-1].index)
    assert items is not None
    replayed = [e for e, _ in items]
    assert [e.job.id for e in replayed] == [f"r{i}.1" for i in range(2, 8)]
    assert [e.index for e in replayed] == list(range(seen[-1].index + 1, log.index + 1))
    log.publish("job.success", lambda: job("r9.1"))
    assert [e.job.id for e, _ in again._queue] == ["r9.1"]  # the queue holds only what came after


def test_no_replay_across_a_gap_a_restart_or_a_dropped_ring() -> None:
    clock = Clock()
    log = EventLog(wall=lambda: 1.0, clock=clock, keep=3, retain_s=60)
    reader = log.attach(parse_topics([]))
    log.publish("job.running", lambda: job("r1.1"))
    mark = log.index
    log.detach(reader)
    clock.now += 61  # past the retention: the events meanwhile were not kept
    log.publish("job.running", lambda: job("r2.1"))
    log.attach(parse_topics([]))
    assert log.replay(mark) is None
    assert log.replay(log.index) == []  # a reader that saw everything since the new recording
    assert log.replay(log.index + 5) is None  # an index from the future: another process
    for i in range(5):
        log.publish("job.running", lambda i=i: job(f"r{i}.2"))  # type: ignore[misc]
    assert log.replay(log.index - 5) is None  # the ring of 3 dropped some
    assert len(log.replay(log.index - 3) or []) == 3

    restarted = EventLog(wall=lambda: 2.0, clock=clock)  # a coordinator started a second later
    assert restarted.index > log.index
    restarted.attach(parse_topics([]))
    assert restarted.replay(log.index) is None


def test_a_reader_that_falls_behind_is_resynced_not_waited_for() -> None:
    log = EventLog(limit=3)
    slow = log.attach(parse_topics([]))
    for i in range(10):
        log.publish("job.running", lambda i=i: job(f"r{i}.1"))  # type: ignore[misc]
    assert slow.behind

    async def read() -> list[bytes] | None:
        return await slow.take()

    assert asyncio.run(read()) is None  # resync it
    slow.resume()
    log.publish("job.success", lambda: job("r10.1"))
    got = asyncio.run(read())
    assert got is not None and [pb.Event.FromString(d).job.id for d in got] == ["r10.1"]


def test_topics() -> None:
    assert parse_topics([]).wants(job("r1.1"))
    runs_jobs = parse_topics(["job:r1"])
    assert runs_jobs.wants(job("r1.2")) and not runs_jobs.wants(job("r2.1"))
    assert not runs_jobs.wants(pb.Event(run=pb.Run(id="r1")))
    assert runs_jobs.wants(pb.Event(type="resync"))  # markers reach every reader
    one_node = parse_topics(["node:laptop", "run"])
    assert one_node.wants(pb.Event(node=pb.NodeStatus(info={"name": "laptop", "id": "n1"})))
    assert not one_node.wants(pb.Event(node=pb.NodeStatus(info={"name": "desk", "id": "n2"})))
    assert one_node.wants(pb.Event(run=pb.Run(id="anything")))
    assert parse_topics(["job", "job:r1"]).wants(job("r7.1"))  # the whole kind wins
    for bad in ["jobs", "job:", "node:a b", "x" * 200, "job:r1;drop"]:
        with pytest.raises(InvalidRequest, match="invalid topic"):
            parse_topics([bad])
    with pytest.raises(InvalidRequest, match="at most 32 topics"):
        parse_topics(["job"] * 33)


def test_each_event_is_serialized_once_and_a_burst_goes_as_one_batch() -> None:
    log = EventLog(wall=lambda: 1.0, clock=Clock())
    readers = [log.attach(parse_topics([])) for _ in range(3)]
    for i in range(4):
        log.publish("job.running", lambda i=i: job(f"r{i}.1"))  # type: ignore[misc]
    taken = [asyncio.run(r.take()) for r in readers]
    assert all(t is not None and len(t) == 4 for t in taken)
    assert all(
        a is b for t in taken[1:] for a, b in zip(t or [], taken[0] or [], strict=True)
    )  # the same bytes
    sent = taken[0] or []
    (envelope,) = frames(sent, batched=True)
    batch = pb.Event.FromString(envelope)
    assert batch.type == "batch" and [e.job.id for e in batch.batch] == [f"r{i}.1" for i in range(4)]
    assert [e.index for e in batch.batch] == list(range(log.index - 3, log.index + 1))
    assert (
        envelope == pb.Event(type="batch", batch=[pb.Event.FromString(d) for d in sent]).SerializeToString()
    )
    assert frames(sent, batched=False) == sent  # a reader that did not ask: one message each
    assert frames(sent[:1], batched=True) == sent[:1]  # an event alone goes as itself


def test_batches_stay_under_their_size() -> None:
    big = [
        pb.Event(index=i, job=pb.Job(id=f"r{i}.1", command="x" * 100_000)).SerializeToString()
        for i in range(7)
    ]
    out = frames(big, batched=True)
    assert len(out) > 1 and all(len(m) < BATCH_BYTES + 110_000 for m in out)
    opened = [e for m in out for e in (pb.Event.FromString(m).batch or [pb.Event.FromString(m)])]
    assert [e.index for e in opened] == list(range(7))


def test_a_batching_reader_gathers_what_comes_within_its_interval() -> None:
    async def takes(batched: bool) -> list[int]:
        log = EventLog(wall=lambda: 1.0, clock=Clock())
        reader = log.attach(parse_topics([]), batched=batched)
        loop = asyncio.get_running_loop()
        log.publish("job.running", lambda: job("r0.1"))
        sizes = [len(await reader.take() or [])]  # after a quiet spell: at once
        log.publish("job.running", lambda: job("r1.1"))
        for i in range(2, 5):  # each in a later turn of the loop, within BATCH_EVERY_S
            loop.call_soon(lambda i=i: log.publish("job.running", lambda: job(f"r{i}.1")))  # type: ignore[misc]
        sizes.append(len(await reader.take() or []))
        return sizes

    assert asyncio.run(takes(True)) == [1, 4]  # the next message waited for the interval
    assert asyncio.run(takes(False)) == [1, 1]  # no interval: taken as soon as there
