"""Dial home: the node opens its link to the coordinator itself (DialHome), for a node
the coordinator cannot dial (behind NAT: café Wi-Fi, a phone hotspot).

One stream carries everything a dialed session and its calls carry: the coordinator
sends `open` (the session's request), then Node calls by name; the node sends the
session's events, from a hub subscription exactly as the Node service's Session does,
and each call's reply, from the same :class:`~node_agent.servicer.NodeCalls`. The channel
is registration's: mTLS with this node's own certificate, the coordinator's pinned by
the fleet's CA and its TLS name (so a call can only come from our coordinator).

When: always with ``--dial-home`` (``dial_home = true``); otherwise as a fallback, once the
node has registered and no coordinator session opened within FALLBACK_S (the
coordinator could not dial the announced addresses). A stream that ends is dialed again
with backoff (in fallback, once again no session opened for FALLBACK_S).

Error handling: the refusals of register.REGISTER_ERRORS are fatal here too (a removed
node, a protocol the coordinator does not take: :meth:`DialHome.run` raises NodeRefused,
and the daemon stops); everything else is logged and retried.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc

from node_agent.errors import CallRefused
from node_agent.hub import Hub
from node_agent.register import Registration, refusal
from node_agent.servicer import NodeCalls
from protos.flota.v1 import coordinator_pb2, coordinator_pb2_grpc

__all__ = ["FALLBACK_S", "DialHome"]

log = logging.getLogger("flota.node")

FALLBACK_S = 5.0  # registered, and no session this long: the coordinator cannot reach us
POLL_S = 0.25
MAX_BACKOFF_S = 5.0
MAX_DETAILS = 1000  # status details stay far below gRPC's 8 KiB trailers

if TYPE_CHECKING:
    Stream = grpc.aio.StreamStreamCall[coordinator_pb2.HomeFrame, coordinator_pb2.CoordinatorFrame]


class DialHome:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        calls: NodeCalls,
        hub: Hub,
        registration: Registration,
        coordinator: str,
        always: bool,
    ) -> None:
        self._stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        self._calls = calls
        self._hub = hub
        self._registration = registration
        self._coordinator = coordinator  # for the log
        self.always = always
        self.connected = False

    async def run(self) -> None:
        """Hold a home link while one is wanted; raises NodeRefused."""
        loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            if not self.always:
                await self._unreached()
            began = loop.time()
            try:
                await self._session()
                log.info("home link to coordinator %s ended", self._coordinator)
            except grpc.aio.AioRpcError as exc:
                refused = refusal(exc, self._coordinator)
                if refused is not None:
                    raise refused from exc
                log.warning("home link to coordinator %s: %s", self._coordinator, exc.details())
            if loop.time() - began > 10:
                delay = 0.2  # it held a while: the next one may well too
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    async def _unreached(self) -> None:
        """Until this node has registered and no coordinator session has been open for
        FALLBACK_S: its coordinator cannot reach the addresses it announced."""
        quiet = 0.0
        while quiet < FALLBACK_S:
            await asyncio.sleep(POLL_S)
            alone = self._registration.registered.is_set() and self._hub.alone.is_set()
            quiet = quiet + POLL_S if alone else 0.0
        log.info(
            "no session from coordinator %s %g s after registering: dialing home",
            self._coordinator,
            FALLBACK_S,
        )

    async def _session(self) -> None:
        """One stream, until it ends (returns) or fails (raises AioRpcError)."""
        stream: Stream = self._stub.DialHome()
        writing = asyncio.Lock()
        work: set[asyncio.Task[None]] = set()
        events: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    frame = await stream.read()
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if stream.cancelled() and not (task and task.cancelling()):
                        return  # our writer gave up on the stream
                    raise
                if not isinstance(frame, coordinator_pb2.CoordinatorFrame):
                    return  # EOF: the coordinator ended the stream
                kind = frame.WhichOneof("kind")
                if kind == "open" and events is None:
                    events = asyncio.ensure_future(self._events(stream, writing, frame.open.heartbeat_s))
                    work.add(events)
                    if not self.connected:
                        log.info("home link to coordinator %s up", self._coordinator)
                    self.connected = True
                elif kind == "call":
                    answer = asyncio.ensure_future(self._answer(stream, writing, frame.call))
                    work.add(answer)
                    answer.add_done_callback(work.discard)
                # else: a frame kind from a newer coordinator, nothing this node acts on
        finally:
            self.connected = False
            for task in work:
                task.cancel()
            await asyncio.gather(*work, return_exceptions=True)
            stream.cancel()

    async def _events(self, stream: Stream, writing: asyncio.Lock, heartbeat_s: float) -> None:
        events = self._calls.session(heartbeat_s)
        try:
            async for event in events:
                async with writing:
                    await stream.write(coordinator_pb2.HomeFrame(event=event))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            log.info("home link: events stopped (%s)", type(exc).__name__)
            stream.cancel()
        finally:
            await events.aclose()

    async def _answer(self, stream: Stream, writing: asyncio.Lock, call: coordinator_pb2.Call) -> None:
        reply = coordinator_pb2.CallReply(id=call.id)
        try:
            reply.reply = await self._calls.call(call.method, call.request)
        except CallRefused as exc:
            reply.code, reply.details = exc.code, str(exc)[:MAX_DETAILS]
        except Exception as exc:  # a fault of ours: the coordinator reads it as gRPC's UNKNOWN
            log.exception("%s over the home link failed", call.method)
            reply.code, reply.details = "UNKNOWN", f"{type(exc).__name__}: {exc}"[:MAX_DETAILS]
        try:
            async with writing:
                await stream.write(coordinator_pb2.HomeFrame(reply=reply))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the stream ended meanwhile: the coordinator's call failed UNAVAILABLE
