"""The reconcile loop: the only place that turns scheduler plans and node events into I/O.

Everything here runs on one asyncio loop, so the in-memory view (active runs, jobs,
attempts, node entries) needs no locks. Every change is written to the store before it
is acted on (a job before its dispatch) or as soon as it is known (a result).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from coordinator.config import CoordinatorConfig
from coordinator.convert import result_from_pb
from coordinator.events import RunHub
from coordinator.models import (
    ATTEMPT_ACTIVE,
    JOB_FINAL,
    RETRYABLE,
    Attempt,
    Job,
    JobView,
    NodeView,
    Result,
    Run,
    Snapshot,
    run_status,
)
from coordinator.node_client import Credentials, NodeCallError, NodeLink
from coordinator.registry import GOODBYE_WINDOW_S, NodeEntry, liveness
from coordinator.scheduler import schedule
from coordinator.secrets import Keyring, redact
from coordinator.store import Store
from protos.flota.v1 import node_pb2, types_pb2

__all__ = ["Reconciler"]

log = logging.getLogger("flota.coordinator")

MAX_DISPATCH_FAILURES = 5
MAX_REFUSALS = 50  # "busy"/"stopping" refusals before a job gives up on being placed
LOG_LINES_MAX = 50_000
TICK_S = 0.5
EXPLAIN_S = 0.25


class MissingSecret(Exception):
    """A job's secret is no longer set on the coordinator."""


def new_run_id(exists: Callable[[str], bool]) -> str:
    while True:
        run_id = "r" + secrets.token_hex(3)
        if not exists(run_id):
            return run_id


def branch_for(job: Job, number: int) -> str:
    base = f"flota/{job.run_id}/{job.index}"
    return base if number == 1 else f"{base}-a{number}"


class Reconciler:
    def __init__(
        self,
        store: Store,
        config: CoordinatorConfig,
        creds: Credentials,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        keyring: Keyring | None = None,
    ) -> None:
        self.store = store
        self.keyring = keyring or Keyring(config.state_dir / "secrets")
        self.config = config
        self.creds = creds
        self.clock = clock
        self.wall = wall
        self.hub = RunHub()
        self.nodes: dict[str, NodeEntry] = {}
        self.links: dict[str, NodeLink] = {}
        self.runs: dict[str, Run] = {}  # active runs only
        self.jobs: dict[str, Job] = {}  # jobs of active runs
        self.attempts: dict[str, tuple[Job, Attempt]] = {}  # active attempts
        self._wake = asyncio.Event()
        self._pending_acks: dict[str, list[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._log_lines: dict[str, int] = {}  # attempt id -> lines stored
        self._held: dict[str, float] = {}  # job id -> not before (a busy node refused it)
        self._views: dict[str, JobView] = {}  # job id -> what the scheduler sees of it
        self._explain_at = 0.0  # when queued jobs' wait reasons are next brought up to date
        self._unwritten: set[str] = set()  # ended runs whose end the store has not taken yet
        self._secrets: dict[str, dict[str, str]] = {}  # job id -> values sent, to redact

    # --- start-up -----------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the in-memory view from the store (a restart resumes every run)."""
        for rec in self.store.nodes():
            if not rec.removed:
                # Silence is counted from now: a node that never comes back is lost in time.
                entry = self._entry(rec.id, rec.name)
                entry.last_seen, entry.fingerprint = self.clock(), rec.fingerprint
                entry.draining = rec.draining
                entry.unreachable_after_s, entry.lost_after_s = rec.unreachable_after_s, rec.lost_after_s
                if rec.address:
                    self.link(rec.id).hint([rec.address], "store")
        for node_id, address in self.config.static_nodes:
            if node_id in self.nodes:
                self.link(node_id).hint([address], "static")
        for run in self.store.active_runs():
            self.runs[run.id] = run
            for job in run.jobs:
                self.jobs[job.id] = job
                for attempt in job.attempts:
                    if attempt.status in ATTEMPT_ACTIVE:
                        self.attempts[attempt.id] = (job, attempt)
                        self._reserve(attempt.node_id, job, attempt)
        for run_id in list(self.runs):
            self._maybe_finish_run(run_id)  # a crash between a job's end and its run's
        if self.runs:
            log.info("resumed %d runs, %d active attempts", len(self.runs), len(self.attempts))

    def _entry(self, node_id: str, name: str) -> NodeEntry:
        entry = self.nodes.get(node_id)
        if entry is None:
            entry = self.nodes[node_id] = NodeEntry(node_id, name)
        return entry

    def link(self, node_id: str) -> NodeLink:
        link = self.links.get(node_id)
        if link is None:
            link = self.links[node_id] = NodeLink(
                node_id, self.creds, self.on_event, self.on_link_state, self.config.heartbeat_s
            )
            link.start()
        return link

    def enrolled(self, node_id: str, name: str, fingerprint: str) -> None:
        entry = self._entry(node_id, name)
        entry.name, entry.fingerprint = name, fingerprint

    def hint(
        self, node_id: str, addresses: list[str], source: str = "register", fingerprint: str = ""
    ) -> bool:
        """Where an enrolled node may listen. False for ids we never enrolled, and for an
        announcement whose certificate fingerprint is not the one we issued (a stale or
        rogue record: it would fail the TLS check anyway, so do not even dial it)."""
        entry = self.nodes.get(node_id)
        if entry is None or entry.removed:
            return False
        if source == "mdns" and fingerprint != entry.fingerprint:
            log.warning("ignoring an mDNS record for %s with a foreign certificate fingerprint", entry.name)
            return False
        self.link(node_id).hint(addresses, source)
        return True

    def goodbye(self, node_id: str, leaving: bool = False) -> None:
        """An mDNS goodbye (anyone can forge one) or, with `leaving`, the node's own word
        over mTLS. Only the latter stops new work going there."""
        entry = self.nodes.get(node_id)
        if entry is None:
            return
        entry.goodbye_at = self.clock()
        if leaving:
            entry.leaving = True
        # A goodbye (which anyone can forge over mDNS) never ends work: a node that still
        # holds attempts goes through unreachable and lost like any silent node.
        if entry.state != "online" and not entry.reservations:
            self._set_state(entry, "offline")

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        """Stop background calls (dispatches, acks, cancels) before the links close. What
        they would have recorded is found again from the store and the nodes at restart."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                self.tick()
            except Exception:  # the loop must outlive one bad tick
                log.exception("reconcile tick failed")
            self._flush_acks()

    def tick(self) -> None:
        now = self.clock()
        for entry in self.nodes.values():
            state = liveness(
                entry,
                now,
                entry.unreachable_after_s or self.config.unreachable_after_s,
                entry.lost_after_s or self.config.lost_after_s,
            )
            if state != entry.state:
                self._set_state(entry, state)
            elif state == "lost" and entry.reservations:
                self._give_up(entry)  # what a failed write left behind last time
        for run_id in list(self._unwritten):
            self._maybe_finish_run(run_id)  # normally done at once; this retries a failed write
        queued = [j for j in self.jobs.values() if j.status == "queued" and self._held.get(j.id, 0) <= now]
        if not queued:
            return
        # A node that said goodbye is leaving: its session may still be open, but no new work.
        online = [
            e
            for e in self.nodes.values()
            if e.state == "online" and e.info is not None and not e.leaving and not e.draining
        ]
        snapshot = Snapshot(
            tuple(self._node_view(e) for e in online), tuple(self._job_view(j) for j in queued)
        )
        # Saying why every other job waits costs a pass over the whole queue: done when a
        # pass places nothing (something else changed), else at most every EXPLAIN_S.
        explain = now >= self._explain_at
        plan = schedule(snapshot, now, explain)
        if not explain and not plan.placements:
            explain, plan = True, schedule(snapshot, now)
        for placement in plan.placements:
            self._dispatch(self.jobs[placement.job_id], self.nodes[placement.node_id])
        if not explain:
            return
        self._explain_at = now + EXPLAIN_S
        draining = [e.name for e in self.nodes.values() if e.state == "online" and e.draining]
        for job_id, reason in plan.waiting.items():
            if draining and not online:
                reason = f"every online node is draining ({', '.join(sorted(draining))})"
            job = self.jobs[job_id]
            if job.wait_reason != reason:
                job.wait_reason = reason
                job.updated_at = self.wall()
                self.store.save_job(job)
                self.hub.job(job, self.node_names)

    def _node_view(self, entry: NodeEntry) -> NodeView:
        info = entry.info
        assert info is not None
        res = entry.reservations.values()
        run_counts: dict[str, int] = {}
        for run_id, *_ in res:
            run_counts[run_id] = run_counts.get(run_id, 0) + 1
        cpus = info.facts.cpu_count or 1
        return NodeView(
            id=entry.id,
            name=entry.name,
            network=info.network,
            labels=dict(info.labels),
            slots=info.slots,
            cpus=float(cpus),
            memory_mb=info.facts.memory_total_mb,
            gpus=len(info.facts.gpus),
            # The node's own count also covers attempts this coordinator gave up on.
            used_slots=max(len(entry.reservations), info.running),
            used_cpus=sum(r[1] for r in res),
            used_memory_mb=sum(r[2] for r in res),
            used_gpus=sum(r[3] for r in res),
            exclusive_busy=any(r[4] for r in res),
            run_counts=run_counts,
            # What a job may require: an agent CLI, or a model this node serves locally.
            agents=frozenset(
                [*info.facts.agent_clis, *(f"model:{m.model}" for m in info.facts.local_models)]
            ),
            load=info.facts.load_1m / cpus,
        )

    def _job_view(self, job: Job) -> JobView:
        view = self._views.get(job.id)
        if view is None:  # a job's wishes never change: one view for its life
            view = self._views[job.id] = self._new_view(job)
        return view

    @staticmethod
    def _new_view(job: Job) -> JobView:
        p = job.placement
        return JobView(
            id=job.id,
            run_id=job.run_id,
            order=job.created_at + job.index * 1e-6,
            cpus=p.cpus,
            memory_mb=p.memory_mb,
            gpus=p.gpus,
            labels=p.labels,
            node=p.node,
            networks=p.networks,
            avoid_networks=p.avoid_networks,
            exclusive=p.exclusive,
            spread=p.spread,
            agent_cli=job.requires,
        )

    def node_names(self) -> dict[str, str]:
        return {e.id: e.name for e in self.nodes.values()}

    def _set_state(self, entry: NodeEntry, state: str) -> None:
        log.info("node %s (%s): %s -> %s", entry.name, entry.id, entry.state, state)
        entry.state = state
        if state == "lost":
            self._give_up(entry)
        if state == "online":
            self.wake()

    def _give_up(self, entry: NodeEntry) -> None:
        """End every attempt a lost node holds, so its jobs can be retried elsewhere."""
        for attempt_id in list(entry.reservations):
            if attempt_id in self.attempts:
                job, attempt = self.attempts[attempt_id]
                self._finish_attempt(
                    job, attempt, Result(status="lost", node_id=entry.id, error=f"node {entry.name} was lost")
                )
            else:
                entry.reservations.pop(attempt_id, None)

    # --- dispatch -------------------------------------------------------------------------

    def _reserve(self, node_id: str, job: Job, attempt: Attempt) -> None:
        entry = self.nodes.get(node_id)
        if entry is not None:
            p = job.placement
            entry.reservations[attempt.id] = (job.run_id, p.cpus, p.memory_mb, p.gpus, p.exclusive)

    def _release(self, attempt: Attempt) -> None:
        entry = self.nodes.get(attempt.node_id)
        if entry is not None:
            entry.reservations.pop(attempt.id, None)

    def _dispatch(self, job: Job, entry: NodeEntry) -> None:
        number = len(job.attempts) + 1
        now = self.wall()
        attempt = Attempt(
            id=f"{job.id}.a{number}",
            job_id=job.id,
            number=number,
            node_id=entry.id,
            status="dispatching",
            branch=branch_for(job, number) if job.repo else "",
            created_at=now,
        )
        before = (job.status, job.node_id, job.wait_reason, job.updated_at)
        job.attempts.append(attempt)
        job.status, job.node_id, job.wait_reason, job.updated_at = "dispatching", entry.id, "", now
        try:
            self.store.add_attempt(job, attempt)  # persisted before the node hears of it
        except Exception:
            job.attempts.pop()
            job.status, job.node_id, job.wait_reason, job.updated_at = before
            raise
        self.attempts[attempt.id] = (job, attempt)
        self._reserve(entry.id, job, attempt)
        self.hub.job(job, self.node_names)
        self._spawn(self._send(job, attempt))

    def _spec(self, job: Job, attempt: Attempt) -> types_pb2.JobSpec:
        spec = types_pb2.JobSpec(
            job_id=job.id,
            run_id=job.run_id,
            attempt_id=attempt.id,
            agent=job.agent,
            command=job.command,
            prompt=job.prompt,
            model=job.model,
            branch=attempt.branch,
            timeout_s=job.timeout_s,
            env=dict(job.env),
            name=job.name,
            resources=types_pb2.Resources(
                cpus=job.placement.cpus, memory_mb=job.placement.memory_mb, gpus=job.placement.gpus
            ),
            max_steps=job.max_steps,
            budget_usd=job.budget_usd,
            api_base=job.api_base,
            check=job.check,
            report_paths=dict(job.report_paths),
        )
        if job.secrets:
            values = self.keyring.values(job.secrets)
            missing = [n for n in job.secrets if n not in values]
            if missing:
                raise MissingSecret(
                    f"secret {missing[0]} is not set on the coordinator (flota secret set {missing[0]})"
                )
            self._secrets[job.id] = values
            spec.secrets.update(values)
        if job.repo and job.resume_from_partial:
            earlier = [a.branch for a in reversed(job.attempts) if a is not attempt and a.branch]
            spec.resume_branches.extend(earlier)
        if job.repo:
            spec.repo.CopyFrom(
                types_pb2.RepoSpec(
                    url=job.repo.url, base_ref=job.repo.base_ref, base_commit=job.repo.base_commit
                )
            )
        return spec

    async def _send(self, job: Job, attempt: Attempt) -> None:
        link = self.links.get(attempt.node_id)
        try:
            if link is None:
                raise NodeCallError("no link to the node")
            try:
                spec = self._spec(job, attempt)
            except MissingSecret as exc:
                self._finish_attempt(
                    job, attempt, Result(status="failed", error=str(exc), node_id=attempt.node_id)
                )
                return
            reply = await link.start_job(spec)
            if reply.accepted:
                # A cancel raced this start, or the attempt ended meanwhile (lost, resent):
                # either way the node must not run it.
                if job.cancel_requested or attempt.status not in ATTEMPT_ACTIVE:
                    await self._tell_cancel(link, attempt)
                return
            if attempt.status == "dispatching":
                # A refusal is the node's passing state (busy with work we no longer track,
                # or stopping): try again shortly, without counting it against the job.
                self._held[job.id] = self.clock() + 1.0
                self._finish_attempt(
                    job,
                    attempt,
                    Result(status="failed", error=f"node busy: {reply.reason}", node_id=attempt.node_id),
                    retry=True,
                )
            return
        except NodeCallError as exc:
            if exc.code is not None and exc.code.name == "INVALID_ARGUMENT":
                if attempt.status != "dispatching":
                    return
                self._finish_attempt(
                    job, attempt, Result(status="failed", error=str(exc), node_id=attempt.node_id)
                )
                return
            error = f"dispatch failed: {exc}"
        if attempt.status != "dispatching":
            return  # a result or a start raced ahead of the reply
        log.warning("attempt %s: %s", attempt.id, error)
        self._finish_attempt(
            job, attempt, Result(status="failed", error=error, node_id=attempt.node_id), retry=True
        )

    async def _tell_cancel(self, link: NodeLink, attempt: Attempt) -> bool:
        try:
            return await link.cancel_job(attempt.id, "cancelled by the user")
        except NodeCallError:
            return False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # --- events from nodes -----------------------------------------------------------------

    def on_event(self, node_id: str, event: node_pb2.NodeEvent) -> None:
        entry = self.nodes.get(node_id)
        if entry is None or entry.removed or node_id not in self.links:
            return
        now = self.clock()
        entry.last_seen, entry.last_seen_wall = now, self.wall()
        kind = event.WhichOneof("kind")
        if kind == "heartbeat":
            old = entry.info
            entry.info = event.heartbeat
            if event.heartbeat.name != entry.name and (old is None or old.name != event.heartbeat.name):
                log.warning(
                    "node %s calls itself %r; it keeps its enrolled name", entry.name, event.heartbeat.name
                )
            if old is not None and old.network != entry.info.network:
                log.info("node %s network: %s -> %s", entry.name, old.network, entry.info.network)
            grace = (event.heartbeat.unreachable_after_s, event.heartbeat.lost_after_s)
            if grace != (entry.unreachable_after_s, entry.lost_after_s):
                entry.unreachable_after_s, entry.lost_after_s = grace
                self.store.node_grace(node_id, *grace)  # a restarted coordinator waits as long
            if entry.state != "online" and self.links[node_id].connected:
                was = entry.state
                self._set_state(entry, "online")
                if was == "lost":  # its attempts were given up: stop what still runs there
                    self._spawn(self._reconcile_node(entry))
            if old is None or old.slots != entry.info.slots or old.network != entry.info.network:
                self.wake()
        elif kind == "started":
            found = self._owned(node_id, event.started.attempt_id)
            if found and found[1].status == "dispatching":
                job, attempt = found
                attempt.status, attempt.started_at = "running", event.started.started_at
                job.status, job.updated_at = "running", self.wall()
                self.store.save_attempt(job, attempt)
                self.hub.job(job, self.node_names)
        elif kind == "log":
            found = self._owned(node_id, event.log.attempt_id)
            if found:  # the job is ours to name, not the node's
                self._on_log(found[0].id, event.log.attempt_id, list(event.log.lines))
        elif kind == "result":
            self._on_result(node_id, event.result)

    def _owned(self, node_id: str, attempt_id: str) -> tuple[Job, Attempt] | None:
        """The active attempt, if `node_id` is the node it was given to: a node speaks
        only for its own work."""
        found = self.attempts.get(attempt_id)
        if found is not None and found[1].node_id != node_id:
            log.warning("node %s sent an event for %s, which is not its attempt", node_id, attempt_id)
            return None
        return found

    def _on_log(self, job_id: str, attempt_id: str, lines: list[str]) -> None:
        """Store and relay log lines, up to LOG_LINES_MAX per attempt: a job that prints
        without end must not fill the coordinator's disk (the node keeps the tail)."""
        if attempt_id not in self.attempts:
            return
        kept = self._log_lines.get(attempt_id)
        if kept is None:  # first lines since this coordinator started: count what is stored
            kept = self.store.log_count(job_id, attempt_id)
        if kept >= LOG_LINES_MAX:
            return
        job = self.jobs.get(job_id)
        if job is not None and job.secrets:
            values = self._secret_values(job)
            lines = [redact(line, values) for line in lines]
        # The last place is kept for the marker, so a truncated log always says so.
        room = LOG_LINES_MAX - 1 - kept
        if len(lines) > room:
            lines = [*lines[:room], f"[flota: log truncated after {LOG_LINES_MAX - 1} lines]"]
        self._log_lines[attempt_id] = kept + len(lines)
        self.store.append_logs(job_id, attempt_id, lines)
        self.hub.log(job_id, attempt_id, lines)

    def _on_result(self, node_id: str, msg: types_pb2.JobResult) -> None:
        if msg.attempt_id in self.attempts:
            found = self._owned(node_id, msg.attempt_id)
            if found is None:
                return
            if msg.log_lines:  # what the node ran while no coordinator listened
                self._on_log(found[0].id, msg.attempt_id, list(msg.log_lines))
            if msg.log_lines_lost:
                # Lines that never reached us: say so where they belong, then the job's end.
                tail = msg.log_tail.splitlines()
                note = f"[flota: {msg.log_lines_lost} lines were not delivered; the last {len(tail)} lines:]"
                self._on_log(found[0].id, msg.attempt_id, [note, *tail])
            self._finish_attempt(*found, result_from_pb(msg))  # persisted before the ack below
            self.wake()
        else:
            self._late_result(node_id, msg)
        # Acked only once stored (or already final): the node then forgets it.
        self._pending_acks.setdefault(node_id, []).append(msg.attempt_id)

    async def on_link_state(self, node_id: str, state: str, detail: str) -> None:
        entry = self.nodes.get(node_id)
        if entry is None or entry.removed or node_id not in self.links:
            return
        if state == "up":
            entry.goodbye_at, entry.leaving = 0.0, False
            entry.last_seen, entry.last_seen_wall = self.clock(), self.wall()  # it just answered
            if entry.state != "online":
                self._set_state(entry, "online")
            self.store.node_seen(node_id, entry.name, detail, self.wall())
            await self._reconcile_node(entry)
        elif entry.state == "online":
            recent_goodbye = entry.goodbye_at and self.clock() - entry.goodbye_at < GOODBYE_WINDOW_S
            self._set_state(entry, "offline" if recent_goodbye and not entry.reservations else "unreachable")

    async def _reconcile_node(self, entry: NodeEntry) -> None:
        """After a (re)connect: collect results the node kept, resend starts it never
        got, give up attempts it lost, and stop work it runs that we gave up on."""
        link = self.links[entry.id]
        # Taken before the call: an attempt dispatched meanwhile is not "forgotten".
        before = {a: self.attempts[a][1].status for a in entry.reservations if a in self.attempts}
        try:
            jobs = await link.list_jobs()
        except NodeCallError as exc:
            log.warning("cannot list jobs on %s: %s; retrying", entry.name, exc)
            self._spawn(self._reconcile_later(entry))
            return
        known = {j.spec.attempt_id for j in jobs}
        for job in jobs:
            attempt_id = job.spec.attempt_id
            if job.state == "finished":
                self._on_result(entry.id, job.result)
            elif attempt_id in self.attempts:
                started = node_pb2.JobStarted(job_id=job.spec.job_id, attempt_id=attempt_id)
                self.on_event(entry.id, node_pb2.NodeEvent(started=started))
                if self.attempts[attempt_id][0].cancel_requested:  # a cancel it never heard
                    self._spawn(self._cancel_quietly(link, attempt_id))
            else:
                log.info("stopping %s on %s: no longer ours", attempt_id, entry.name)
                self._spawn(self._cancel_quietly(link, attempt_id))
        for attempt_id, status in before.items():
            found = self.attempts.get(attempt_id)
            if found is None or attempt_id in known:
                continue
            if status == "dispatching":
                self._spawn(self._send(*found))  # StartJob is idempotent on the attempt id
            else:
                self._finish_attempt(
                    *found, Result(status="lost", node_id=entry.id, error="the node no longer knows this job")
                )
        self._flush_acks()

    async def _reconcile_later(self, entry: NodeEntry) -> None:
        await asyncio.sleep(1.0)
        link = self.links.get(entry.id)
        if link is not None and link.connected:
            await self._reconcile_node(entry)

    async def _cancel_quietly(self, link: NodeLink, attempt_id: str) -> None:
        try:
            await link.cancel_job(attempt_id, "the coordinator gave up on this attempt")
        except NodeCallError:
            pass

    def _flush_acks(self) -> None:
        """Send pending acks, one background call per node: a slow node delays no one."""
        pending, self._pending_acks = self._pending_acks, {}
        for node_id, ids in pending.items():
            link = self.links.get(node_id)
            if link and link.connected:
                self._spawn(self._ack(link, ids))

    @staticmethod
    async def _ack(link: NodeLink, ids: list[str]) -> None:
        try:
            await link.ack(ids)
        except NodeCallError:
            pass  # the node keeps them; they are acked after the next reconnect

    # --- outcomes --------------------------------------------------------------------------

    def _finish_attempt(self, job: Job, attempt: Attempt, result: Result, retry: bool = False) -> None:
        """Record an attempt's end, then retry its job or end it. The store is written
        before memory lets go of the attempt: if the write fails, the attempt is still
        active and its result is taken again on the node's next report."""
        if result.status not in JOB_FINAL:  # a node's word, checked like any input
            result = replace(result, status="failed", error=f"node reported status {result.status!r}")
        result = self._scrub(job, result)
        if job.status in JOB_FINAL or (job.attempts and job.attempts[-1] is not attempt):
            self._late(job, attempt, result)  # an older attempt, or one whose job is decided
            return
        saved_attempt = (attempt.status, attempt.finished_at, attempt.error)
        saved_job = (job.status, job.node_id, job.updated_at, job.wait_reason, job.result, job.branch)
        now = self.wall()
        attempt.status = result.status
        attempt.finished_at = result.finished_at or now
        attempt.error = result.error
        ran = sum(1 for a in job.attempts if a.status in RETRYABLE)
        failures = sum(1 for a in job.attempts if a.error.startswith("dispatch failed"))
        refusals = sum(1 for a in job.attempts if a.error.startswith("node busy"))
        again = (result.status in RETRYABLE and ran < job.max_attempts) or (
            retry and failures < MAX_DISPATCH_FAILURES and refusals < MAX_REFUSALS
        )
        if again and not job.cancel_requested:
            job.status, job.node_id, job.updated_at = "queued", "", now
            job.wait_reason = f"retrying: {result.error}"
        else:
            status = "cancelled" if job.cancel_requested and result.status != "success" else result.status
            job.status, job.result, job.updated_at = status, replace(result, status=status), now
            job.branch = result.branch
        try:
            self.store.save_attempt(job, attempt, result)
        except Exception:
            # Nothing changed, then: the attempt stays active and is ended again when the
            # node reports next (or the node is found lost again on a later tick).
            attempt.status, attempt.finished_at, attempt.error = saved_attempt
            job.status, job.node_id, job.updated_at, job.wait_reason, job.result, job.branch = saved_job
            raise
        self.attempts.pop(attempt.id, None)
        self._log_lines.pop(attempt.id, None)
        self._release(attempt)
        if job.status == "queued":
            self.wake()
        else:
            self._held.pop(job.id, None)
        self.hub.job(job, self.node_names)
        self._maybe_finish_run(job.run_id)

    def _late_result(self, node_id: str, msg: types_pb2.JobResult) -> None:
        """A result for an attempt this coordinator already closed itself: the node was
        lost or unreachable, a start seemed to fail, or the coordinator restarted. It is
        recorded, never dropped: its branch is on the remote either way."""
        job_id, sep, _ = msg.attempt_id.rpartition(".a")
        job = self.jobs.get(job_id) if sep else None
        if job is None and sep:
            job = self.store.get_job(job_id)
        attempt = next((a for a in job.attempts if a.id == msg.attempt_id), None) if job else None
        if job is None or attempt is None or attempt.node_id != node_id:
            return  # not ours, or not that node's to report
        closed_here = attempt.status == "lost" or attempt.error.startswith(
            ("cancelled (node unreachable)", "dispatch failed")
        )
        if not closed_here:
            return  # already has the node's own result: a repeat delivery
        if msg.log_lines:
            values = self._secret_values(job) if job.secrets else {}
            lines = [redact(line, values) for line in list(msg.log_lines)[:LOG_LINES_MAX]]
            self.store.append_logs(job.id, attempt.id, lines)
        self._late(job, attempt, result_from_pb(msg))

    def _late(self, job: Job, attempt: Attempt, result: Result) -> None:
        """Record the end of an attempt that no longer drives its job. The first success
        wins: a late success takes a job that has none (and stops a retry still running);
        after a win, another success is recorded as superseded. A job that was not retried
        takes its attempt's real result in place of the coordinator's guess."""
        if result.status not in JOB_FINAL:
            result = replace(result, status="failed", error=f"node reported status {result.status!r}")
        result = self._scrub(job, result)
        now = self.wall()
        wins = result.status == "success" and job.status != "success" and not job.cancel_requested
        # The coordinator's own guess ("lost") for the job's last attempt gives way to
        # what really happened; a success or a user's cancel is never overwritten.
        replaces = (
            job.status in JOB_FINAL
            and job.status != "success"
            and not job.cancel_requested
            and job.attempts[-1] is attempt
        )
        attempt.status = "superseded" if result.status == "success" and not wins else result.status
        attempt.finished_at = result.finished_at or now
        attempt.error = result.error
        if attempt.status == "superseded":
            attempt.error = "another attempt of this job succeeded first; its branch is kept"
        saved = (job.status, job.node_id, job.updated_at, job.wait_reason, job.result, job.branch)
        if wins or replaces:
            job.status, job.result, job.branch = result.status, result, result.branch
            job.node_id, job.updated_at, job.wait_reason = attempt.node_id, now, ""
        try:
            self.store.save_attempt(job, attempt, result)
        except Exception:
            job.status, job.node_id, job.updated_at, job.wait_reason, job.result, job.branch = saved
            raise
        self.attempts.pop(attempt.id, None)
        self._log_lines.pop(attempt.id, None)
        self._release(attempt)
        log.info("late result for %s: %s (job %s is %s)", attempt.id, attempt.status, job.id, job.status)
        if wins:
            self._held.pop(job.id, None)
            for other in job.attempts:
                if other is not attempt and other.status in ATTEMPT_ACTIVE:
                    link = self.links.get(other.node_id)
                    if link is not None and link.connected:
                        self._spawn(self._cancel_quietly(link, other.id))
        self.hub.job(job, self.node_names)
        if job.run_id in self.runs:
            self._maybe_finish_run(job.run_id)
        elif wins or replaces:
            run = self.store.get_run(job.run_id)
            if run is not None:
                self.store.finish_run_again(run.id, run_status([j.status for j in run.jobs]))

    async def remove(self, entry: NodeEntry) -> list[str]:
        """Revoke a node: refuse its certificate, stop dialing it, give up its attempts."""
        self.store.remove_node(entry.id)
        entry.removed, entry.fingerprint = True, ""
        given_up = [a for a in entry.reservations if a in self.attempts]
        link = self.links.get(entry.id)
        if link is not None and link.connected:  # a last word: stop what runs there
            await asyncio.gather(*(self._cancel_quietly(link, a) for a in given_up))
        for attempt_id in given_up:
            job, attempt = self.attempts[attempt_id]
            self._finish_attempt(
                job, attempt, Result(status="lost", node_id=entry.id, error=f"node {entry.name} was removed")
            )
        entry.reservations.clear()
        self._set_state(entry, "offline")
        link = self.links.pop(entry.id, None)
        if link is not None:
            await link.close()
        log.warning("node %s (%s) removed: its certificate is refused from now on", entry.name, entry.id)
        return given_up

    def _secret_values(self, job: Job) -> dict[str, str]:
        """The values sent for `job` (or, after a restart, the current ones) to redact."""
        values = self._secrets.get(job.id)
        if values is None:
            values = self._secrets[job.id] = self.keyring.values(job.secrets)
        return values

    def _scrub(self, job: Job, result: Result) -> Result:
        """A node redacts what its jobs print; this is the net under that (a daemon
        restarted mid-job no longer knows the values)."""
        if not job.secrets:
            return result
        values = self._secret_values(job)
        return replace(
            result,
            error=redact(result.error, values),
            log_tail=redact(result.log_tail, values),
            answer=redact(result.answer, values),
        )

    def drain(self, entry: NodeEntry, draining: bool) -> None:
        self.store.set_draining(entry.id, draining)
        entry.draining = draining
        log.info("node %s: %s", entry.name, "draining" if draining else "eligible again")
        self.wake()

    def _maybe_finish_run(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None:
            return
        status = run_status([j.status for j in run.jobs])
        if status == "running":
            return
        run.status, run.finished_at = status, self.wall()
        self._unwritten.add(run.id)
        self.store.finish_run(run.id, status, run.finished_at)
        self._unwritten.discard(run.id)
        for job in run.jobs:
            self.jobs.pop(job.id, None)
            self._secrets.pop(job.id, None)
            self._views.pop(job.id, None)
        del self.runs[run_id]
        self.hub.run_ended(run, self.node_names)

    # --- requests from the API -----------------------------------------------------------------

    def submit(self, run: Run) -> None:
        self.store.create_run(run)
        self.runs[run.id] = run
        for job in run.jobs:
            self.jobs[job.id] = job
        self.wake()

    async def cancel(self, jobs: list[Job]) -> list[str]:
        """Cancel jobs: queued ones at once; running ones by telling their nodes, whose
        result then says cancelled. Attempts on nodes that cannot be told end now."""
        cancelled, calls = [], []
        for job in jobs:
            job = self.jobs.get(job.id, job)
            if job.status in JOB_FINAL:
                continue
            job.cancel_requested = True
            self._held.pop(job.id, None)
            cancelled.append(job.id)
            active = [a for a in job.attempts if a.status in ATTEMPT_ACTIVE]
            if not active:
                job.status, job.updated_at = "cancelled", self.wall()
                job.result = Result(status="cancelled", error="cancelled before it started")
                self.store.save_job(job)
                self.hub.job(job, self.node_names)
                self._maybe_finish_run(job.run_id)
                continue
            self.store.save_job(job)
            calls += [self._cancel_attempt(job, a) for a in active]
        await asyncio.gather(*calls)
        return cancelled

    async def _cancel_attempt(self, job: Job, attempt: Attempt) -> None:
        link = self.links.get(attempt.node_id)
        if link is not None and link.connected:
            await self._tell_cancel(link, attempt)
            if link.connected:
                # Told, or not found yet: a start still on its way is cancelled when it is
                # accepted, and a result on its way is recorded as it arrives.
                return
        if attempt.status in ATTEMPT_ACTIVE:
            self._finish_attempt(
                job,
                attempt,
                Result(status="cancelled", node_id=attempt.node_id, error="cancelled (node unreachable)"),
            )
