"""Every call the coordinator makes to a node, and what each failure means.

The reconcile loop asks for a node call here and gets a plain answer back; it never
holds a link or sees a gRPC error. Links are made by an injected factory (tests pass
fakes that record the calls).

A node has one dialed link (link.NodeLink) and, while it holds one, a home link it
opened itself (home.HomeLink, a node behind NAT). Calls go over the home link while it is
up; the dialed link is held meanwhile (it does not dial), so the two never both carry
the node's session, and it dials again once the home link ends.

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

    async def hold(self, held: bool) -> None:
        """Stop dialing (ending a session the link holds) while `held`; dial again after."""
        ...

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
        self._links: dict[str, Link] = {}  # dialed by us
        self._homes: dict[str, Link] = {}  # opened by the node (home.HomeLink)
        self._home_errors: dict[str, str] = {}  # why a node's last home link ended

    def link(self, node_id: str) -> Link:
        """The node's dialed link, made (and started) on first use."""
        link = self._links.get(node_id)
        if link is None:
            link = self._links[node_id] = self._make_link(node_id)
        return link

    def _current(self, node_id: str) -> Link | None:
        """The link calls go over: the home link while it is up, else the dialed one."""
        home = self._homes.get(node_id)
        if home is not None and home.connected:
            return home
        return self._links.get(node_id)

    def connected(self, node_id: str) -> bool:
        link = self._current(node_id)
        return link is not None and link.connected

    def way(self, node_id: str) -> str:
        """Which way the node's link goes: "home" (the node dialed us), "dialed", or ""."""
        link = self._current(node_id)
        if link is None or not link.connected:
            return ""
        return "home" if link is self._homes.get(node_id) else "dialed"

    def has_link(self, node_id: str) -> bool:
        return node_id in self._links or node_id in self._homes

    def address(self, node_id: str) -> str:
        link = self._current(node_id)
        return link.address if link else ""

    def last_error(self, node_id: str) -> str:
        link = self._current(node_id)
        return (link.last_error if link else "") or self._home_errors.get(node_id, "")

    def __iter__(self) -> Iterator[str]:
        return iter(list(dict.fromkeys([*self._links, *self._homes])))

    async def attach_home(self, node_id: str, home: Link) -> None:
        """The node opened a link itself: it replaces an earlier one (a node that dialed
        again before we saw its old stream die), and the dialed link holds off."""
        old = self._homes.get(node_id)
        self._homes[node_id] = home
        self._home_errors.pop(node_id, None)
        if old is not None:
            await old.close()
        await self.link(node_id).hold(True)

    async def detach_home(self, node_id: str, home: Link) -> None:
        """The node's home link ended: dial it again (where it said it listens)."""
        if self._homes.get(node_id) is not home:
            return  # replaced already, or dropped
        del self._homes[node_id]
        self._home_errors[node_id] = home.last_error
        dialed = self._links.get(node_id)
        if dialed is not None:
            await dialed.hold(False)

    async def drop(self, node_id: str) -> None:
        self._home_errors.pop(node_id, None)
        home = self._homes.pop(node_id, None)
        if home is not None:
            await home.close()
        link = self._links.pop(node_id, None)
        if link is not None:
            await link.close()

    async def close(self) -> None:
        for node_id in list(self._links):
            await self.drop(node_id)

    async def start(self, node_id: str, spec: types_pb2.JobSpec) -> StartOutcome:
        link = self._current(node_id)
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
        link = self._current(node_id)
        if link is None or not link.connected:
            return False
        try:
            return await link.cancel_job(attempt_id, reason)
        except NodeCallError:
            return False

    async def list_jobs(self, node_id: str) -> list[NodeJob]:
        """Raises NodeCallError: the caller tries again later."""
        return await (self._current(node_id) or self.link(node_id)).list_jobs()

    async def ack(self, node_id: str, attempt_ids: list[str]) -> None:
        link = self._current(node_id)
        if link is None or not link.connected:
            return
        try:
            await link.ack(attempt_ids)
        except NodeCallError:
            pass  # the node keeps them; they are acked after the next reconnect

    async def cleanup(self, node_id: str, run_id: str, refs: bool = False) -> tuple[int, int]:
        """(worktrees, refs) removed on the node; NodeCallError when it cannot be reached
        or refused (the caller says which nodes were not cleaned)."""
        link = self._current(node_id)
        if link is None or not link.connected:
            raise NodeCallError("the node is not connected", "UNAVAILABLE")
        try:
            return await link.cleanup(run_id, refs)
        except NodeCallError as exc:
            log.warning("cleanup on %s failed: %s", node_id, exc)
            raise
