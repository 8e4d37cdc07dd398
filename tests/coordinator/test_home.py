"""coordinator/home.py's HomeLink over a real loopback gRPC stream: calls become frames
answered by id, with NodeLink's timeouts and error codes (so dispatch's START_ERRORS
reads them unchanged), and events reach the same handlers.

The node's side is the real one (node_agent.home.DialHome running the real NodeCalls
over a real Runner) where the node answers; where it must not (a timeout, a reply to an
unknown id, a hang-up with a call in flight) it is a raw client of the same stream.
The server is a bare Coordinator servicer that hands each stream to a HomeLink: the
API's certificate checks are the end-to-end tests' (tests/test_dial_home.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator.dispatch import START_ERRORS, Dispatcher
from coordinator.errors import NodeCallError
from coordinator.home import HomeLink
from coordinator.models import Cause, Finished, Heartbeat, NodeEvent, Started
from node_agent.home import DialHome
from node_agent.hub import Hub
from node_agent.journal import Journal
from node_agent.register import Registration
from node_agent.runner import Runner
from node_agent.servicer import NodeCalls
from node_agent.workspace import Workspace
from protos.flota.v1 import coordinator_pb2, coordinator_pb2_grpc, node_pb2, types_pb2
from tests.coordinator.fakes import FakeLink

pytestmark = pytest.mark.timeout(60)


class Home(coordinator_pb2_grpc.CoordinatorServicer):
    """Each DialHome stream becomes a HomeLink, attached to a real Dispatcher."""

    def __init__(self) -> None:
        self.events: list[NodeEvent] = []
        self.states: list[str] = []
        self.links: list[HomeLink] = []
        self.dialed = FakeLink()  # the node's dialed link, which must hold off meanwhile
        self.dialed.connected = False  # it cannot reach the node
        self.dispatch = Dispatcher(lambda node_id: self.dialed)
        self.ended = asyncio.Event()

    async def _state(self, node_id: str, state: str, detail: str) -> None:
        self.states.append(state)

    def _event(self, node_id: str, event: NodeEvent) -> None:
        self.events.append(event)

    async def DialHome(
        self, request_iterator: AsyncIterator[coordinator_pb2.HomeFrame], context: Any
    ) -> AsyncIterator[coordinator_pb2.CoordinatorFrame]:
        link = HomeLink("n1", context.peer(), self._event, self._state, 0.2, self.dispatch.detach_home)
        link.call_timeout_s = 0.5
        self.links.append(link)
        await self.dispatch.attach_home("n1", link)
        frames = link.serve(request_iterator)
        try:
            async for frame in frames:
                yield frame
        finally:
            await frames.aclose()
            self.ended.set()


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def serving(home: Home) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(home, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def spec(attempt: str, command: str = "echo hi") -> types_pb2.JobSpec:
    return types_pb2.JobSpec(
        job_id="r000001.1", run_id="r000001", attempt_id=attempt, agent="shell", command=command
    )


def test_calls_over_the_home_link_reach_the_real_node_and_answer(tmp_path: Path) -> None:
    async def scenario() -> None:
        home = Home()
        server, channel = await serving(home)
        try:
            await calls_scenario(home, channel)
        finally:
            await channel.close()
            await server.stop(0)

    async def calls_scenario(home: Home, channel: grpc.aio.Channel) -> None:
        hub = Hub()
        work, jobs = Workspace(tmp_path / "work"), Journal(tmp_path / "jobs")
        runner = Runner("n1", "node-1", work, jobs, hub, lambda: 2)
        calls = NodeCalls(runner, hub, lambda: types_pb2.NodeInfo(id="n1", name="node-1", slots=2), 1.0)
        client = DialHome(channel, calls, hub, Registration(channel, calls.info, hub, "test"), "test", True)
        async with asyncio.TaskGroup() as group:
            runner.resume(group)
            node = group.create_task(client.run())
            link = await until(lambda: home.dispatch.connected("n1") and home.links[0], "the link up")
            assert home.dispatch.way("n1") == "home"
            assert home.dialed.holds == [True]  # the dialed link holds off while the node is home
            await until(lambda: any(isinstance(e, Heartbeat) for e in home.events), "a heartbeat")
            assert home.states == ["up"]

            # StartJob: accepted, and its start and result come back as events.
            outcome = await home.dispatch.start("n1", spec("r000001.1.a1"))
            assert outcome.accepted, outcome
            finished = await until(
                lambda: [e for e in home.events if isinstance(e, Finished)], "the job's result"
            )
            assert finished[0].attempt_id == "r000001.1.a1"
            assert finished[0].result.status == "success"
            assert any(isinstance(e, Started) and e.attempt_id == "r000001.1.a1" for e in home.events)
            listed = await link.list_jobs()
            assert [(j.attempt_id, j.finished is not None) for j in listed] == [("r000001.1.a1", True)]
            await link.ack(["r000001.1.a1"])
            assert await link.list_jobs() == []

            # A spec the node refuses: its code, read by START_ERRORS as for a dialed node.
            with pytest.raises(NodeCallError) as refused:
                await link.start_job(spec("../escape"))
            assert refused.value.code == "INVALID_ARGUMENT"
            assert "invalid attempt_id" in str(refused.value)
            outcome = await home.dispatch.start("n1", spec("../escape"))
            assert (outcome.accepted, outcome.cause) == (False, START_ERRORS["INVALID_ARGUMENT"])
            assert outcome.cause == Cause.REJECTED
            with pytest.raises(NodeCallError) as bad_ack:
                await link.ack(["bad id!"])
            assert bad_ack.value.code == "INVALID_ARGUMENT"

            # Cancel: a running job is found and stopped; an unknown one is not.
            assert (await home.dispatch.start("n1", spec("r000001.1.a2", "sleep 30"))).accepted
            await until(
                lambda: any(isinstance(e, Started) and e.attempt_id == "r000001.1.a2" for e in home.events),
                "the second job started",
            )
            assert await home.dispatch.cancel("n1", "r000001.1.a2", "test") is True
            assert await home.dispatch.cancel("n1", "r000001.1.a9", "test") is False
            stopped = await until(
                lambda: [e for e in home.events if isinstance(e, Finished) and e.attempt_id.endswith("a2")],
                "the cancelled job's result",
            )
            assert stopped[0].result.status == "cancelled"
            assert await link.cleanup("r000001") == (2, 0)  # (worktrees, refs): both jobs' scratch dirs

            # The coordinator hangs up (dispatch.drop, as `flota node remove` does): "down",
            # the node's stream ends, and calls fail UNAVAILABLE.
            await home.dispatch.drop("n1")
            assert home.states == ["up", "down"]
            await until(lambda: not client.connected, "the node saw the stream end")
            with pytest.raises(NodeCallError) as gone:
                await link.list_jobs()
            assert gone.value.code == "UNAVAILABLE"
            # It dials again (always), and a new link comes up.
            await until(lambda: len(home.links) == 2 and home.links[1].connected, "dialed again")
            node.cancel()
            await runner.stop()

    asyncio.run(scenario())


Script = Callable[
    [grpc.aio.StreamStreamCall[coordinator_pb2.HomeFrame, coordinator_pb2.CoordinatorFrame]], Awaitable[None]
]


async def scripted(home: Home, channel: grpc.aio.Channel) -> tuple[Any, HomeLink]:
    """A raw node: reads the open, sends one heartbeat, and then only what a test sends."""
    stream = coordinator_pb2_grpc.CoordinatorStub(channel).DialHome()
    frame = await stream.read()
    assert frame.WhichOneof("kind") == "open"
    assert frame.open.heartbeat_s == 0.2
    beat = node_pb2.NodeEvent(seq=1, heartbeat=types_pb2.NodeInfo())
    await stream.write(coordinator_pb2.HomeFrame(event=beat))
    link = await until(lambda: home.links and home.links[-1].connected and home.links[-1], "up")
    return stream, link


async def answer(stream: Any, call_id: int, reply: bytes = b"") -> None:
    await stream.write(coordinator_pb2.HomeFrame(reply=coordinator_pb2.CallReply(id=call_id, reply=reply)))


async def read_call(stream: Any) -> coordinator_pb2.Call:
    frame = await stream.read()
    assert frame.WhichOneof("kind") == "call", frame
    call: coordinator_pb2.Call = frame.call
    return call


def test_codes_timeouts_and_a_hang_up_are_node_call_errors() -> None:
    async def scenario() -> None:
        home = Home()
        server, channel = await serving(home)
        stream, link = await scripted(home, channel)

        # A code and its details, as a dialed node's gRPC status would carry them.
        pending = asyncio.ensure_future(home.dispatch.start("n1", spec("r000001.1.a1")))
        call = await read_call(stream)
        assert call.method == "StartJob"
        sent = types_pb2.JobSpec()
        sent.ParseFromString(call.request)
        assert sent.attempt_id == "r000001.1.a1"
        reply = coordinator_pb2.CallReply(id=call.id, code="RESOURCE_EXHAUSTED", details="too many calls")
        await stream.write(coordinator_pb2.HomeFrame(reply=reply))
        outcome = await pending
        assert (outcome.accepted, outcome.cause) == (False, Cause.DISPATCH)
        assert outcome.error == "dispatch failed: StartJob failed: too many calls"

        # A reply in time answers; one for an id nobody waits for is dropped.
        pending_list = asyncio.ensure_future(link.list_jobs())
        call = await read_call(stream)
        await answer(stream, call.id + 100)
        await answer(stream, call.id, node_pb2.ListJobsReply().SerializeToString())
        assert await pending_list == []

        # No reply: DEADLINE_EXCEEDED after the call's timeout, the same doubt as a dialed
        # node's deadline (START_ERRORS: DISPATCH); a reply after it changes nothing.
        pending = asyncio.ensure_future(home.dispatch.start("n1", spec("r000001.1.a2")))
        call = await read_call(stream)
        outcome = await pending
        assert (outcome.accepted, outcome.cause) == (False, START_ERRORS["DEADLINE_EXCEEDED"])
        assert "Deadline Exceeded" in outcome.error
        await answer(stream, call.id, node_pb2.StartJobReply(accepted=True).SerializeToString())
        assert link.connected

        # The node hangs up with a call in flight: UNAVAILABLE, and the link is down.
        pending_cancel = asyncio.ensure_future(link.cancel_job("r000001.1.a1", "test"))
        await read_call(stream)
        stream.cancel()
        with pytest.raises(NodeCallError) as gone:
            await pending_cancel
        assert gone.value.code == "UNAVAILABLE"
        await until(lambda: home.states == ["up", "down"], "down")
        assert not home.dispatch.connected("n1") and home.dispatch.way("n1") == ""
        assert home.dialed.holds == [True, False]  # dialing again, now the node is not home
        assert home.dispatch.last_error("n1")
        await channel.close()
        await server.stop(0)

    asyncio.run(scenario())


def test_a_node_that_dials_again_replaces_its_old_link() -> None:
    """A node whose old stream the coordinator has not seen die yet: the new one wins,
    the old one goes down first, and calls go over the new one."""

    async def scenario() -> None:
        home = Home()
        server, channel = await serving(home)
        _, first = await scripted(home, channel)
        stream, second = await scripted(home, channel)
        assert first is not second and not first.connected
        assert home.states == ["up", "down", "up"]
        pending = asyncio.ensure_future(home.dispatch.cancel("n1", "r000001.1.a1", "test"))
        call = await read_call(stream)
        await answer(stream, call.id, node_pb2.CancelJobReply(found=True).SerializeToString())
        assert await pending is True
        await channel.close()
        await server.stop(0)

    asyncio.run(scenario())
