"""Every call the coordinator makes to a node, and what each failure means.

The reconcile loop asks for a node call here and gets a plain answer back; it never
holds a link or sees a gRPC error. Links are made by an injected factory (tests pass
fakes that record the calls).

Error handling: a failed StartJob is read through START_ERRORS, one entry per gRPC code
with the reason for it. Every other call is advisory (cancel, ack, cleanup, list): its
failure is logged and settled by the next reconnect, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from coordinator.errors import NodeCallError
from coordinator.models import Cause, NodeJob
from protos.flota.v1 import node_pb2, types_pb2

__all__ = ["START_ERRORS", "Dispatcher", "Link", "LinkFactory", "StartOutcome"]

log = logging.getLogger("flota.coordinator.dispatch")

# What a failed StartJob means for its attempt, by gRPC code. Anything not listed is
# taken as Cause.DISPATCH. A DISPATCH or REFUSED attempt is retried (up to
# outcomes.MAX_DISPATCH_FAILURES / MAX_REFUSALS); a REJECTED one ends its job.
START_ERRORS: Mapping[str, Cause] = {
    # The node checked the spec and will not run it: any node would say the same.
    "INVALID_ARGUMENT": Cause.REJECTED,
    # No connection, or it broke mid-call: the job may have started. StartJob is
    # idempotent per attempt id, and the reconnect's ListJobs finds it if it did.
    "UNAVAILABLE": Cause.DISPATCH,
    # The deadline passed: the same doubt as UNAVAILABLE, the same answer.
    "DEADLINE_EXCEEDED": Cause.DISPATCH,
    # The node's call gate or message limits held the call back: try again shortly.
    "RESOURCE_EXHAUSTED": Cause.DISPATCH,
    # The node refused our certificate (it joined another coordinator): counted, so a
    # job gives up after MAX_DISPATCH_FAILURES rather than loop.
    "PERMISSION_DENIED": Cause.DISPATCH,
    "UNAUTHENTICATED": Cause.DISPATCH,
    # A fault on the node's side: counted the same way.
    "INTERNAL": Cause.DISPATCH,
    "UNKNOWN": Cause.DISPATCH,
}


class Link(Protocol):
    """What dispatch needs of a node's transport (link.NodeLink, or a test's fake)."""

    @property
    def connected(self) -> bool: ...

    address: str
    last_error: str

    def hint(self, addresses: list[str], source: str = "register") -> None: ...

    async def start_job(self, spec: types_pb2.JobSpec) -> node_pb2.StartJobReply: ...

    async def cancel_job(self, attempt_id: str, reason: str) -> bool: ...

    async def list_jobs(self) -> list[NodeJob]: ...

    async def ack(self, attempt_ids: list[str]) -> None: ...

    async def cleanup(self, run_id: str, refs: bool = False) -> tuple[int, int]: ...

    async def close(self) -> None: ...


LinkFactory = Callable[[str], Link]  # node id -> a started link


@dataclass(frozen=True, slots=True)
class StartOutcome:
    accepted: bool
    cause: Cause = Cause.NODE  # why not, when not accepted
    error: str = ""


class Dispatcher:
    def __init__(self, make_link: LinkFactory) -> None:
        self._make_link = make_link
        self._links: dict[str, Link] = {}

    def link(self, node_id: str) -> Link:
        """The node's link, made (and started) on first use."""
        link = self._links.get(node_id)
        if link is None:
            link = self._links[node_id] = self._make_link(node_id)
        return link

    def connected(self, node_id: str) -> bool:
        link = self._links.get(node_id)
        return link is not None and link.connected

    def has_link(self, node_id: str) -> bool:
        return node_id in self._links

    def address(self, node_id: str) -> str:
        link = self._links.get(node_id)
        return link.address if link else ""

    def last_error(self, node_id: str) -> str:
        link = self._links.get(node_id)
        return link.last_error if link else ""

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._links))

    async def drop(self, node_id: str) -> None:
        link = self._links.pop(node_id, None)
        if link is not None:
            await link.close()

    async def close(self) -> None:
        for node_id in list(self._links):
            await self.drop(node_id)

    async def start(self, node_id: str, spec: types_pb2.JobSpec) -> StartOutcome:
        link = self._links.get(node_id)
        if link is None:
            return StartOutcome(False, Cause.DISPATCH, "dispatch failed: no link to the node")
        try:
            reply = await link.start_job(spec)
        except NodeCallError as exc:
            cause = START_ERRORS.get(exc.code, Cause.DISPATCH)
            return StartOutcome(
                False, cause, str(exc) if cause == Cause.REJECTED else f"dispatch failed: {exc}"
            )
        if reply.accepted:
            return StartOutcome(True)
        # A refusal is the node's passing state (busy with work we no longer track, or
        # stopping): try again shortly, counted apart from failures.
        return StartOutcome(False, Cause.REFUSED, f"node busy: {reply.reason}")

    async def cancel(self, node_id: str, attempt_id: str, reason: str) -> bool:
        """Whether the node was told and knew the attempt."""
        link = self._links.get(node_id)
        if link is None or not link.connected:
            return False
        try:
            return await link.cancel_job(attempt_id, reason)
        except NodeCallError:
            return False

    async def list_jobs(self, node_id: str) -> list[NodeJob]:
        """Raises NodeCallError: the caller tries again later."""
        return await self.link(node_id).list_jobs()

    async def ack(self, node_id: str, attempt_ids: list[str]) -> None:
        link = self._links.get(node_id)
        if link is None or not link.connected:
            return
        try:
            await link.ack(attempt_ids)
        except NodeCallError:
            pass  # the node keeps them; they are acked after the next reconnect

    async def cleanup(self, node_id: str, run_id: str, refs: bool = False) -> tuple[int, int]:
        """(worktrees, refs) removed on the node; NodeCallError when it cannot be reached
        or refused (the caller says which nodes were not cleaned)."""
        link = self._links.get(node_id)
        if link is None or not link.connected:
            raise NodeCallError("the node is not connected", "UNAVAILABLE")
        try:
            return await link.cleanup(run_id, refs)
        except NodeCallError as exc:
            log.warning("cleanup on %s failed: %s", node_id, exc)
            raise
