"""The link a node opened itself (DialHome): a node behind NAT, or started with
--dial-home, that the coordinator cannot dial.

The same Link as link.NodeLink for dispatch.py, over the other direction: the node's
events arrive on the stream and are delivered to the same handlers (so sessions.py
cannot tell the two apart), and each Node call becomes a Call frame on the stream,
answered by a CallReply with the same id. The node is who its certificate says (the
API checked it, as for RegisterNode); the node checked ours against the fleet's CA.

Error handling: as NodeLink's. A call raises NodeCallError with the node's gRPC code
name (so dispatch.START_ERRORS reads it unchanged), DEADLINE_EXCEEDED past its timeout,
and UNAVAILABLE when the link is down or goes down while the call waits.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from coordinator.convert import event_from_pb, node_job_from_pb
from coordinator.errors import NodeCallError
from coordinator.link import CALL_TIMEOUT_S, CLEANUP_TIMEOUT_S, EventHandler, StateHandler
from coordinator.models import NodeJob
from protos.flota.v1 import coordinator_pb2, node_pb2, types_pb2

__all__ = ["CLOSE_WAIT_S", "HomeLink"]

log = logging.getLogger("flota.coordinator.home")

CLOSE_WAIT_S = 5.0  # how long close() waits for the stream's handler to let go
R = TypeVar("R", bound=Message)


class HomeLink:
    def __init__(
        self,
        node_id: str,
        peer: str,
        on_event: EventHandler,
        on_state: StateHandler,
        heartbeat_s: float,
        on_end: Callable[[str, HomeLink], Awaitable[None]] | None = None,
    ) -> None:
        self.node_id = node_id
        self.address = peer  # where the node's connection comes from (shown, never dialed)
        self.last_error = ""
        self._on_event = on_event
        self._on_state = on_state
        self._on_end = on_end
        self._heartbeat_s = heartbeat_s
        self.call_timeout_s = CALL_TIMEOUT_S  # as NodeLink's; Cleanup gets CLEANUP_TIMEOUT_S
        self._up = False
        self._closing = False
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[coordinator_pb2.CallReply]] = {}
        self._outbox: asyncio.Queue[coordinator_pb2.CoordinatorFrame | None] = asyncio.Queue()
        self._events: asyncio.Queue[node_pb2.NodeEvent | None] = asyncio.Queue()
        self._served = False
        self._done = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._up and not self._closing

    def hint(self, addresses: list[str], source: str = "register") -> None:
        """Nothing to dial: the node comes to us."""

    async def hold(self, held: bool) -> None:
        """Nothing to hold: this link never dials."""

    # --- the stream -----------------------------------------------------------------------

    async def serve(
        self, incoming: AsyncIterator[coordinator_pb2.HomeFrame]
    ) -> AsyncGenerator[coordinator_pb2.CoordinatorFrame, None]:
        """The frames to send the node, while reading what it sends; ends when the node
        hangs up, the connection breaks, or close() is called."""
        self._served = True
        self._outbox.put_nowait(
            coordinator_pb2.CoordinatorFrame(open=node_pb2.SessionRequest(heartbeat_s=self._heartbeat_s))
        )
        reader = asyncio.ensure_future(self._read(incoming))
        events = asyncio.ensure_future(self._deliver())
        try:
            while not self._closing:
                sending = asyncio.ensure_future(self._outbox.get())
                await asyncio.wait({sending, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not sending.done():
                    sending.cancel()
                    break  # the node's side ended
                frame = sending.result()
                if frame is None:
                    break  # close()
                yield frame
        finally:
            await self._end(reader, events)

    async def _read(self, incoming: AsyncIterator[coordinator_pb2.HomeFrame]) -> None:
        try:
            async for frame in incoming:
                kind = frame.WhichOneof("kind")
                if kind == "event":
                    self._events.put_nowait(frame.event)
                elif kind == "reply":
                    waiting = self._pending.pop(frame.reply.id, None)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(frame.reply)
                # else: a frame kind from a newer node, nothing this coordinator acts on
            self.last_error = "session ended by the node"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke: gRPC says why
            self.last_error = _one_line(exc) or "the connection closed"

    async def _deliver(self) -> None:
        """Events in order; "up" first, as NodeLink: it reconciles the node, whose calls
        are answered meanwhile by _read (which never waits for this)."""
        event = await self._events.get()
        if event is None:
            return
        self._up = True
        self.last_error = ""
        await self._on_state(self.node_id, "up", "")  # "": no address to dial it at later
        while event is not None:
            decoded = event_from_pb(event)
            if decoded is not None:
                self._on_event(self.node_id, decoded)
            event = await self._events.get()

    async def _end(self, reader: asyncio.Future[None], events: asyncio.Future[None]) -> None:
        self._closing = True
        for task in (reader, events):
            task.cancel()
        await asyncio.gather(reader, events, return_exceptions=True)
        for waiting in self._pending.values():
            if not waiting.done():
                waiting.set_exception(NodeCallError("the connection closed", "UNAVAILABLE"))
        self._pending.clear()
        try:
            if self._up:
                self._up = False
                await self._on_state(self.node_id, "down", self.last_error or "the home link closed")
            if self._on_end is not None:
                await self._on_end(self.node_id, self)
        finally:
            self._done.set()

    async def close(self) -> None:
        """End the stream (the node dials again, and is refused if it was removed)."""
        if not self.last_error:
            self.last_error = "closed by the coordinator"
        self._closing = True
        self._outbox.put_nowait(None)
        if not self._served:
            return
        try:
            await asyncio.wait_for(self._done.wait(), CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("the home link of %s did not close within %g s", self.node_id, CLOSE_WAIT_S)

    # --- calls ----------------------------------------------------------------------------

    async def _call(self, method: str, request: Message, reply_type: type[R], timeout: float = 0) -> R:
        if not self.connected:
            raise NodeCallError(f"node {self.node_id} is not connected", "UNAVAILABLE")
        call_id = next(self._ids)
        waiting: asyncio.Future[coordinator_pb2.CallReply] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = waiting
        frame = coordinator_pb2.Call(id=call_id, method=method, request=request.SerializeToString())
        self._outbox.put_nowait(coordinator_pb2.CoordinatorFrame(call=frame))
        try:
            reply = await asyncio.wait_for(waiting, timeout or self.call_timeout_s)
        except TimeoutError:
            raise NodeCallError(f"{method} failed: Deadline Exceeded", "DEADLINE_EXCEEDED") from None
        except NodeCallError as exc:
            raise NodeCallError(f"{method} failed: {exc}", exc.code) from None
        finally:
            self._pending.pop(call_id, None)
        if reply.code:
            raise NodeCallError(f"{method} failed: {reply.details or reply.code}", reply.code)
        answer = reply_type()
        try:
            answer.ParseFromString(reply.reply)
        except DecodeError:
            raise NodeCallError(f"{method} failed: a malformed reply", "INTERNAL") from None
        return answer

    async def start_job(self, spec: types_pb2.JobSpec) -> node_pb2.StartJobReply:
        return await self._call("StartJob", spec, node_pb2.StartJobReply)

    async def cancel_job(self, attempt_id: str, reason: str) -> bool:
        request = node_pb2.CancelJobRequest(attempt_id=attempt_id, reason=reason)
        return (await self._call("CancelJob", request, node_pb2.CancelJobReply)).found

    async def list_jobs(self) -> list[NodeJob]:
        reply = await self._call("ListJobs", node_pb2.ListJobsRequest(), node_pb2.ListJobsReply)
        return [node_job_from_pb(job) for job in reply.jobs]

    async def ack(self, attempt_ids: list[str]) -> None:
        request = node_pb2.AckResultsRequest(attempt_ids=attempt_ids)
        await self._call("AckResults", request, node_pb2.AckResultsReply)

    async def cleanup(self, run_id: str, refs: bool = False) -> tuple[int, int]:
        """(worktrees, refs) removed; `run_id` may be a job's id (without refs)."""
        request = node_pb2.NodeCleanupRequest(run_id=run_id, refs=refs)
        reply = await self._call("Cleanup", request, node_pb2.NodeCleanupReply, CLEANUP_TIMEOUT_S)
        return reply.removed, reply.refs_removed


def _one_line(exc: Exception) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # grpc.aio.AioRpcError
        return f"{code().name}: {details()}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
