"""Log delivery from a node: bounded, never silent about a gap."""

from __future__ import annotations

import asyncio

from node_agent.hub import LOG_BACKLOG, Hub, gap_marker


def _drain(sub) -> list:  # type: ignore[no-untyped-def]
    events = []
    while not sub.queue.empty():
        event = sub.queue.get_nowait()
        sub.taken(event)
        events.append(event)
    return events


def test_lines_with_no_session_are_counted_and_marked_when_one_comes() -> None:
    async def scenario() -> None:
        hub = Hub()
        hub.log("r1.1", "r1.1.a1", ["a", "b", "c"])  # nobody listens
        sub = hub.subscribe()
        hub.log("r1.1", "r1.1.a1", ["d"])
        [event] = _drain(sub)
        assert list(event.log.lines) == [gap_marker(3), "d"]
        assert hub.take_gap("r1.1.a1") == (0, 3)  # lost, and marked where they were

    asyncio.run(scenario())


def test_a_session_that_falls_behind_keeps_its_results_and_heartbeats() -> None:
    async def scenario() -> None:
        hub = Hub()
        sub = hub.subscribe()
        for i in range(LOG_BACKLOG + 5):
            hub.log("r1.1", "r1.1.a1", [f"line {i}"])
        from protos.flota.v1 import types_pb2

        hub.publish(result=types_pb2.JobResult(job_id="r1.1", attempt_id="r1.1.a1", status="success"))
        events = _drain(sub)
        kinds = [e.WhichOneof("kind") for e in events]
        assert kinds.count("log") == LOG_BACKLOG and kinds[-1] == "result"
        assert hub.take_gap("r1.1.a1") == (5, 0)  # lost at the end: unmarked
        # Once drained, delivery resumes and says what is missing first.
        hub.log("r1.1", "r1.1.a2", ["x"])
        [event] = _drain(sub)
        assert list(event.log.lines) == ["x"]

    asyncio.run(scenario())


def test_gap_is_marked_in_place_when_delivery_resumes_mid_job() -> None:
    async def scenario() -> None:
        hub = Hub()
        sub = hub.subscribe()
        for _ in range(LOG_BACKLOG):
            hub.log("r1.1", "r1.1.a1", ["kept"])
        hub.log("r1.1", "r1.1.a1", ["lost 1", "lost 2"])
        _drain(sub)
        hub.log("r1.1", "r1.1.a1", ["after"])
        [event] = _drain(sub)
        assert list(event.log.lines) == [gap_marker(2), "after"]
        assert hub.take_gap("r1.1.a1") == (0, 2)
        assert hub.take_gap("r1.1.a1") == (0, 0)

    asyncio.run(scenario())
