"""Registration with the coordinator: where this node listens, and when it leaves.

The loop tells the coordinator where the node listens: at start, on change, and now and
then while no coordinator session is open (it may have restarted elsewhere). Which
errors end it is one table, :data:`REGISTER_ERRORS`, one comment per entry (as the
Buildkite agent keeps its RPC errors).

Error handling: a fatal refusal raises :class:`~node_agent.errors.NodeRefused` (removed, or
a protocol the coordinator does not take) out of
:meth:`Registration.run` (the daemon then stops as on SIGTERM, and exits 2); every
other error is logged and retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from enum import StrEnum

import grpc

from node_agent.errors import Incompatible, NodeRefused, NodeRemoved
from node_agent.hub import Hub
from protos.flota.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2

__all__ = ["REGISTER_ERRORS", "REGISTER_PERIOD_S", "Registration", "Verdict", "refusal", "verdict"]

log = logging.getLogger("flota.node")

REGISTER_PERIOD_S = 15.0


class Verdict(StrEnum):
    RETRY = "retry"  # log it, try again with backoff
    FATAL = "fatal"  # stop the daemon: no retry can succeed


# What a RegisterNode error means for the daemon. A code not listed is retried.
REGISTER_ERRORS: Mapping[grpc.StatusCode, Verdict] = {
    # The coordinator no longer knows this certificate (`flota node remove` revoked it,
    # or it was never enrolled there): only a new join can change that.
    grpc.StatusCode.PERMISSION_DENIED: Verdict.FATAL,
    # The coordinator does not take this node's protocol (too old or too new for it): an
    # upgrade of one side is the only fix, and its line says which (flota node upgrade).
    grpc.StatusCode.FAILED_PRECONDITION: Verdict.FATAL,
    # The coordinator is down or restarting, or the network is cut: it comes back.
    grpc.StatusCode.UNAVAILABLE: Verdict.RETRY,
    # A slow coordinator or a lossy link: the next try may pass.
    grpc.StatusCode.DEADLINE_EXCEEDED: Verdict.RETRY,
    # The call was cut short (the coordinator stopping in the middle of it).
    grpc.StatusCode.CANCELLED: Verdict.RETRY,
    # The coordinator sheds load (too many calls at once).
    grpc.StatusCode.RESOURCE_EXHAUSTED: Verdict.RETRY,
    # The TLS layer or the coordinator's gate did not take the handshake this once
    # (a coordinator that is renewing its certificate); revocation is PERMISSION_DENIED.
    grpc.StatusCode.UNAUTHENTICATED: Verdict.RETRY,
    # A coordinator of another version or with a bug: keep serving, and say so in the log;
    # the jobs already here still finish and report.
    grpc.StatusCode.UNIMPLEMENTED: Verdict.RETRY,
    grpc.StatusCode.INTERNAL: Verdict.RETRY,
    grpc.StatusCode.UNKNOWN: Verdict.RETRY,
    # It refused what this node says about itself (a label, an address): a config change
    # and a restart fix it, and meanwhile the node keeps its jobs.
    grpc.StatusCode.INVALID_ARGUMENT: Verdict.RETRY,
}


def verdict(code: grpc.StatusCode) -> Verdict:
    return REGISTER_ERRORS.get(code, Verdict.RETRY)


def refusal(exc: grpc.aio.AioRpcError, coordinator: str) -> NodeRefused | None:
    """What a fatal error of a call to the coordinator (RegisterNode, DialHome) means for
    this node (logged here), or None when it is retried."""
    if verdict(exc.code()) is not Verdict.FATAL:
        return None
    log.error("coordinator %s refused this node (%s: %s)", coordinator, exc.code().name, exc.details())
    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return Incompatible(exc.details() or "the coordinator refused this node")
    return NodeRemoved()


async def _first_of(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class Registration:
    """The node's registrations with its coordinator over one channel."""

    def __init__(
        self, channel: grpc.aio.Channel, info: Callable[[], types_pb2.NodeInfo], hub: Hub, coordinator: str
    ) -> None:
        self._stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        self._info = info
        self._hub = hub
        self._coordinator = coordinator  # for the log
        self.registered = asyncio.Event()
        self.changed = asyncio.Event()  # addresses or profile changed: register again

    async def run(self) -> None:
        """Register, and again on change or while no session is open; raises NodeRefused."""
        delay = 0.2
        while True:
            # Cleared before the snapshot is read: a change after this point sets it again.
            self.changed.clear()
            try:
                request = coordinator_pb2.RegisterNodeRequest(info=self._info())
                await self._stub.RegisterNode(request, timeout=5)
                if not self.registered.is_set():
                    log.info("registered with coordinator %s", self._coordinator)
                self.registered.set()
                delay = REGISTER_PERIOD_S
            except grpc.aio.AioRpcError as exc:
                refused = refusal(exc, self._coordinator)
                if refused is not None:
                    raise refused from exc
                log.warning("cannot register with coordinator %s: %s", self._coordinator, exc.details())
                delay = min(max(delay * 2, 0.5), 5.0)
            try:
                await asyncio.wait_for(self.changed.wait(), delay)
            except TimeoutError:
                pass
            while self._hub.listening and not self.changed.is_set():
                # A coordinator holds a session: it knows where we are. When the last
                # session ends (the coordinator restarted, or removed this node), go
                # round again at once rather than a period later.
                await _first_of(self.changed, self._hub.alone, REGISTER_PERIOD_S)

    async def goodbye(self) -> None:
        """Tell the coordinator this node leaves, so that no new work is placed here."""
        try:
            request = coordinator_pb2.RegisterNodeRequest(info=self._info(), leaving=True)
            await self._stub.RegisterNode(request, timeout=2)
        except grpc.aio.AioRpcError as exc:  # the coordinator may be gone too; it will see us lost
            log.info("could not say goodbye to the coordinator: %s", exc.code().name)
