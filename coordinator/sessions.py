"""The coordinator's side of each node's session: what a node says (heartbeats, starts,
log lines, results) and what its link going up or down means.

Events arrive decoded (convert.event_from_pb); every attempt's end goes to the
reconciler, which decides it through `outcomes` and persists it. Results are acked to
the node only once stored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from coordinator import outcomes
from coordinator.errors import NodeCallError
from coordinator.fleet import GOODBYE_WINDOW_S, NodeEntry, protocol_problem
from coordinator.models import (
    Attempt,
    AttemptStatus,
    Cause,
    Finished,
    Heartbeat,
    Job,
    JobStatus,
    LogLines,
    NodeEvent,
    NodeState,
    Result,
    ResultStatus,
    Started,
)

if TYPE_CHECKING:
    from coordinator.reconcile import Reconciler

__all__ = ["NodeSessions"]

log = logging.getLogger("flota.coordinator")


class NodeSessions:
    def __init__(self, rec: Reconciler) -> None:
        self.rec = rec
        self._pending_acks: dict[str, list[str]] = {}
        # Nodes whose link came up (and was reconciled) but whose first heartbeat has not
        # arrived yet: that heartbeat makes them online, without reconciling again.
        self._awaiting_facts: set[str] = set()

    def enrolled(self, node_id: str, name: str, fingerprint: str) -> None:
        entry = self.rec.fleet.add(node_id, name)
        # A removed node may join again (a new token): it is a node again, as the store says.
        entry.name, entry.fingerprint, entry.removed = name, fingerprint, False

    def hint(
        self, node_id: str, addresses: list[str], source: str = "register", fingerprint: str = ""
    ) -> bool:
        """Where an enrolled node may listen. False for ids we never enrolled, and for an
        announcement whose certificate fingerprint is not the one we issued (a stale or
        rogue record: it would fail the TLS check anyway, so do not even dial it)."""
        entry = self.rec.fleet.get(node_id)
        if entry is None or entry.removed:
            return False
        if source == "mdns" and fingerprint != entry.fingerprint:
            log.warning("ignoring an mDNS record for %s with a foreign certificate fingerprint", entry.name)
            return False
        self.rec.dispatch.link(node_id).hint(addresses, source)
        return True

    def goodbye(self, node_id: str, leaving: bool = False) -> None:
        """An mDNS goodbye (anyone can forge one) or, with `leaving`, the node's own word
        over mTLS. Only the latter stops new work going there; neither ends work: a node
        that still holds attempts goes through unreachable and lost like any silent node."""
        entry = self.rec.fleet.get(node_id)
        if entry is None:
            return
        entry.goodbye_at = self.rec.clock()
        if leaving:
            entry.leaving = True
        if entry.state != NodeState.ONLINE and not entry.reservations:
            self.rec.set_state(entry, NodeState.OFFLINE)

    # --- events from nodes ------------------------------------------------------------------

    def on_event(self, node_id: str, event: NodeEvent) -> None:
        entry = self.rec.fleet.get(node_id)
        if entry is None or entry.removed or not self.rec.dispatch.has_link(node_id):
            return
        entry.last_seen, entry.last_seen_wall = self.rec.clock(), self.rec.wall()
        if isinstance(event, Heartbeat):
            self._on_heartbeat(entry, event)
        elif isinstance(event, Started):
            found = self._owned(node_id, event.attempt_id)
            if found and found[1].status == AttemptStatus.DISPATCHING:
                job, attempt = found
                running = {"status": JobStatus.RUNNING, "updated_at": self.rec.wall()}
                started = {"status": AttemptStatus.RUNNING, "started_at": event.started_at}
                self.rec.persist(job, running, attempt, started)
                self.rec.hub.job(job, self.rec.fleet.names)
        elif isinstance(event, LogLines):
            found = self._owned(node_id, event.attempt_id)
            if found:  # the job is ours to name, not the node's
                self.rec.logs.append(found[0], event.attempt_id, event.lines)
        elif isinstance(event, Finished):
            self._on_result(node_id, event)

    def _on_heartbeat(self, entry: NodeEntry, beat: Heartbeat) -> None:
        old, info = entry.info, beat.info
        problem = protocol_problem(entry.name, info.protocol, info.version)
        if problem:  # a node this coordinator cannot speak with: never online, never given work
            if entry.refused != problem:
                log.warning("%s", problem)
                # Hang up: the node, alone, registers again and hears why (it then stops).
                self.rec.spawn(self.rec.dispatch.drop(entry.id))
            entry.refused = problem
            return
        entry.refused = ""
        entry.info = info
        if info.name != entry.name and (old is None or old.name != info.name):
            log.warning("node %s calls itself %r; it keeps its enrolled name", entry.name, info.name)
        if old is not None and old.network != info.network:
            log.info("node %s network: %s -> %s", entry.name, old.network, info.network)
        grace = (info.unreachable_after_s, info.lost_after_s)
        if grace != (entry.unreachable_after_s, entry.lost_after_s):
            entry.unreachable_after_s, entry.lost_after_s = grace
            self.rec.store.node_grace(entry.id, *grace)  # a restarted coordinator waits as long
        fresh = entry.id in self._awaiting_facts
        self._awaiting_facts.discard(entry.id)
        if entry.state != NodeState.ONLINE and self.rec.dispatch.connected(entry.id):
            was = entry.state
            self.rec.set_state(entry, NodeState.ONLINE)
            # Its attempts were given up: stop what still runs there (a link that just came
            # up has been reconciled already).
            if was == NodeState.LOST and not fresh:
                self.rec.spawn(self._reconcile_node(entry))
        if old is None or old.slots != info.slots or old.network != info.network:
            self.rec.wake()

    def _owned(self, node_id: str, attempt_id: str) -> tuple[Job, Attempt] | None:
        """The active attempt, if `node_id` is the node it was given to: a node speaks
        only for its own work."""
        found = self.rec.attempts.get(attempt_id)
        if found is not None and found[1].node_id != node_id:
            log.warning("node %s sent an event for %s, which is not its attempt", node_id, attempt_id)
            return None
        return found

    def _on_result(self, node_id: str, event: Finished) -> None:
        if event.attempt_id in self.rec.attempts:
            found = self._owned(node_id, event.attempt_id)
            if found is None:
                return
            job, attempt = found
            if event.log_lines:  # what the node ran while no coordinator listened
                self.rec.logs.append(job, attempt.id, event.log_lines)
            # Lines that never reached us and that nothing marked yet (they went missing at
            # the end): say so, then the job's end.
            lost = event.result.log_lines_lost - event.result.log_lines_marked
            if lost > 0:
                tail = event.result.log_tail.splitlines()
                note = f"[flota: {lost} lines were not delivered; the last {len(tail)} lines:]"
                self.rec.logs.append(job, attempt.id, [note, *tail])
            self.rec.end(job, attempt, event.result)  # persisted before the ack below
            self.rec.wake()
        else:
            self.rec.late_result(node_id, event)
        # Acked only once stored (or already final): the node then forgets it.
        self._pending_acks.setdefault(node_id, []).append(event.attempt_id)

    async def on_link_state(self, node_id: str, state: str, detail: str) -> None:
        entry = self.rec.fleet.get(node_id)
        if entry is None or entry.removed or not self.rec.dispatch.has_link(node_id):
            return
        if state == "up":
            entry.goodbye_at, entry.leaving = 0.0, False
            entry.last_seen, entry.last_seen_wall = self.rec.clock(), self.rec.wall()  # it just answered
            # Not online yet: a node is online once its facts (the first heartbeat) arrived,
            # else `flota nodes` shows it online with none, or with the last session's.
            if entry.state != NodeState.ONLINE:
                self._awaiting_facts.add(node_id)
            self.rec.store.node_seen(node_id, entry.name, detail, self.rec.wall())
            await self._reconcile_node(entry)
            return
        self._awaiting_facts.discard(node_id)
        if entry.state == NodeState.ONLINE:
            recent = entry.goodbye_at and self.rec.clock() - entry.goodbye_at < GOODBYE_WINDOW_S
            gone = recent and not entry.reservations
            self.rec.set_state(entry, NodeState.OFFLINE if gone else NodeState.UNREACHABLE)

    async def _reconcile_node(self, entry: NodeEntry) -> None:
        """After a (re)connect: collect results the node kept, resend starts it never
        got, give up attempts it lost, and stop work it runs that we gave up on."""
        # Taken before the call: an attempt dispatched meanwhile is not "forgotten".
        before = {a: self.rec.attempts[a][1].status for a in entry.reservations if a in self.rec.attempts}
        try:
            listed = await self.rec.dispatch.list_jobs(entry.id)
        except NodeCallError as exc:
            log.warning("cannot list jobs on %s: %s; retrying", entry.name, exc)
            self.rec.spawn(self._reconcile_later(entry))
            return
        plan = outcomes.reconnected(listed, self.rec.attempts, before)
        for finished in plan.results:
            self._on_result(entry.id, finished)
        for attempt_id in plan.started:
            self.on_event(entry.id, Started(attempt_id))
        for attempt_id in plan.cancel:
            if attempt_id not in self.rec.attempts:
                log.info("stopping %s on %s: no longer ours", attempt_id, entry.name)
            self.rec.spawn(self.rec.cancel_quietly(entry.id, attempt_id))
        for attempt_id in plan.resend:
            if attempt_id in self.rec.attempts:
                self.rec.spawn(self.rec.send(*self.rec.attempts[attempt_id]))  # StartJob is idempotent
        for attempt_id in plan.forgotten:
            if attempt_id in self.rec.attempts:
                job, attempt = self.rec.attempts[attempt_id]
                result = Result(
                    ResultStatus.LOST, node_id=entry.id, error="the node no longer knows this job"
                )
                self.rec.end(job, attempt, result, Cause.LOST)
        self.flush_acks()

    async def _reconcile_later(self, entry: NodeEntry) -> None:
        await asyncio.sleep(1.0)
        if self.rec.dispatch.connected(entry.id):
            await self._reconcile_node(entry)

    def flush_acks(self) -> None:
        """Send pending acks, one background call per node: a slow node delays no one."""
        pending, self._pending_acks = self._pending_acks, {}
        for node_id, ids in pending.items():
            if self.rec.dispatch.connected(node_id):
                self.rec.spawn(self.rec.dispatch.ack(node_id, ids))
