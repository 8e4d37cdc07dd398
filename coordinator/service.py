"""What the coordinator does for its callers: the API's only dependency.

Submit, cancel, retry, cleanup, prune, drain, remove, tokens, secrets, enrollment and the queries.
The long calls (cleanup, prune) say how far they are through a `Report` callback.
Inputs are plain values (validate.py checks and translates requests); outputs are
models; errors are the coordinator's own tree. Changes to the loop's state go through
the reconciler, on the same event loop, so they need no locks.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Collection
from dataclasses import dataclass

from coordinator import outcomes
from coordinator.config import CoordinatorConfig
from coordinator.errors import (
    AlreadyExists,
    Incompatible,
    InvalidRequest,
    NodeCallError,
    NotFound,
    PkiError,
    Refused,
    RepoError,
)
from coordinator.fleet import NodeEntry, protocol_problem
from coordinator.gitbase import delete_refs, list_run_refs, push_base
from coordinator.home import HomeLink
from coordinator.models import (
    JOB_FINAL,
    Job,
    JobStatus,
    NodeRecord,
    NodeState,
    PrunedRun,
    Pruning,
    RemoteRefs,
    Run,
    RunStatus,
)
from coordinator.pki import CertificateAuthority, make_token, secret_hash, token_matches
from coordinator.reconcile import Reconciler, new_run_id
from coordinator.validate import Submission, Task, check_id
from protos.contract import JoinToken, TokenError, fingerprint
from protos.limits import NAME_RE, NODE_ID_RE, show

__all__ = ["REFS_PER_PUSH", "Joined", "NodeStatus", "Report", "Service"]

log = logging.getLogger("flota.coordinator.api")

# A step of a long call, for its caller to show: (what, done, total).
Report = Callable[[str, int, int], None]
REFS_PER_PUSH = 100  # remote refs deleted per push: progress between pushes, few connections


@dataclass(frozen=True, slots=True)
class NodeStatus:
    entry: NodeEntry
    address: str
    error: str  # why the link is down, while it is
    link: str = ""  # which way the link goes: "dialed", "home" (the node dialed us), "" (none up)


@dataclass(frozen=True, slots=True)
class Joined:
    certificate_pem: bytes
    ca_pem: bytes
    node_id: str


def _quiet(what: str, done: int, total: int) -> None:
    pass


class Service:
    def __init__(self, rec: Reconciler, ca: CertificateAuthority, config: CoordinatorConfig) -> None:
        self.rec = rec
        self.ca = ca
        self.config = config
        self.wall = rec.wall

    # --- nodes ----------------------------------------------------------------------------

    def register(
        self,
        node_id: str,
        cert_fingerprint: str,
        addresses: list[str],
        leaving: bool,
        protocol: int = 0,
        version: str = "",
    ) -> float:
        """A node says where it listens (or that it is leaving); the heartbeat period back.
        A node whose protocol this coordinator does not take is refused (Incompatible)."""
        entry = self.rec.fleet.get(node_id)
        if entry is None or entry.removed or entry.fingerprint != cert_fingerprint:
            raise Refused("this certificate is not the one enrolled")
        entry.refused = protocol_problem(entry.name, protocol, version)
        if entry.refused and not leaving:
            log.warning("%s", entry.refused)
            raise Incompatible(entry.refused)
        if leaving:
            self.rec.sessions.goodbye(node_id, leaving=True)
        elif not self.rec.sessions.hint(node_id, addresses):
            raise Refused("this node is not enrolled (or was removed)")
        return self.config.heartbeat_s

    async def dial_home(self, node_id: str, cert_fingerprint: str, peer: str) -> HomeLink:
        """A node opens its link itself (it is behind NAT, or was told to): the link, its
        events going to the same sessions as a dialed node's. Refused as RegisterNode is."""
        entry = self.rec.fleet.get(node_id)
        if entry is None or entry.removed or entry.fingerprint != cert_fingerprint:
            raise Refused("this certificate is not the one enrolled (or the node was removed)")
        if entry.refused:
            raise Incompatible(entry.refused)
        sessions = self.rec.sessions
        home = HomeLink(
            node_id,
            peer,
            sessions.on_event,
            sessions.on_link_state,
            self.config.heartbeat_s,
            on_end=self.rec.dispatch.detach_home,
        )
        await self.rec.dispatch.attach_home(node_id, home)
        log.info("node %s dialed home from %s", entry.name, peer or "?")
        return home

    def node(self, name_or_id: str) -> NodeEntry:
        if not (NAME_RE.match(name_or_id) or NODE_ID_RE.match(name_or_id)):
            raise InvalidRequest(f"invalid node name or id {show(name_or_id)}")
        entry = self.rec.fleet.find(name_or_id)
        if entry is None:
            raise NotFound(f"no node {show(name_or_id)} (see: flota nodes)")
        return entry

    def status(self, entry: NodeEntry) -> NodeStatus:
        d = self.rec.dispatch
        return NodeStatus(
            entry,
            d.address(entry.id),
            d.last_error(entry.id) if entry.state != NodeState.ONLINE else "",
            d.way(entry.id),
        )

    def nodes(self) -> list[NodeStatus]:
        return [self.status(e) for e in sorted(self.rec.fleet, key=lambda e: e.name) if not e.removed]

    def drain(self, name_or_id: str, draining: bool) -> NodeStatus:
        entry = self.node(name_or_id)
        self.rec.drain(entry, draining)
        return self.status(entry)

    async def remove(self, name_or_id: str) -> tuple[NodeEntry, list[str]]:
        entry = self.node(name_or_id)
        return entry, await self.rec.remove(entry)

    # --- secrets and tokens -----------------------------------------------------------------

    def set_secret(self, name: str, value: str) -> list[str]:
        self.rec.keyring.set(name, value)
        return self.rec.keyring.names()

    def delete_secret(self, name: str) -> list[str]:
        self.rec.keyring.delete(name)
        return self.rec.keyring.names()

    def secrets(self) -> list[str]:
        return self.rec.keyring.names()

    def create_token(self, ttl_s: float) -> tuple[str, float]:
        """A one-time join token and when it expires."""
        ttl = ttl_s or self.config.token_ttl_s
        if not 10 <= ttl <= 7 * 86400:
            raise InvalidRequest("token lifetime must be between 10 seconds and 7 days")
        token = make_token(self.ca.fingerprint)
        now = self.wall()
        self.rec.store.add_token(token.id, secret_hash(token), now, now + ttl)
        return str(token), now + ttl

    def join(self, token_text: str, name: str, csr_pem: bytes) -> Joined:
        """Enroll a node: one-time token + CSR -> certificate."""
        try:
            token = JoinToken.parse(token_text)
        except TokenError as exc:
            raise InvalidRequest(str(exc)) from exc
        if not NAME_RE.match(name):
            raise InvalidRequest(f"invalid node name {name!r}")
        stored = self.rec.store.token(token.id)
        now = self.wall()
        # One answer for unknown, wrong and used tokens: a guesser learns nothing.
        if stored is None or not token_matches(token, stored[0]) or stored[2] is not None:
            raise Refused("invalid or already used join token")
        if stored[1] < now:
            raise Refused("join token expired; create a new one")
        if token.ca_fingerprint != self.ca.fingerprint:
            raise Refused("the token pins another CA")
        node_id = _csr_node_id(csr_pem)
        if node_id is None:
            raise InvalidRequest("the CSR must name the node as CN=node:<id>")
        fleet = self.rec.fleet
        if node_id in fleet and not fleet[node_id].removed:
            # An id is public (mDNS); a token holder must not get a second certificate for it.
            raise AlreadyExists(
                f"node id {node_id} is already enrolled; to enroll this machine again, "
                "delete its identity directory first"
            )
        taken = next((e for e in fleet if e.name == name and e.id != node_id and not e.removed), None)
        if taken is not None:
            raise AlreadyExists(f"the name {name!r} belongs to node {taken.id}; join with another --name")
        try:
            cert_pem = self.ca.sign_node_csr(csr_pem, node_id)
        except PkiError as exc:
            raise InvalidRequest(str(exc)) from exc
        if not self.rec.store.use_token(token.id, node_id, now):
            raise Refused("invalid or already used join token")
        fp = fingerprint(ssl.PEM_cert_to_DER_cert(cert_pem.decode()))
        self.rec.store.enroll_node(NodeRecord(node_id, name, fp, now))
        self.rec.sessions.enrolled(node_id, name, fp)
        log.info("node %s (%s) joined", name, node_id)
        return Joined(cert_pem, self.ca.cert_pem, node_id)

    # --- runs -----------------------------------------------------------------------------

    async def submit(self, sub: Submission) -> Run:
        keyring = self.rec.keyring
        for name in sub.secrets:
            keyring.check_name(name)
            if keyring.resolve(name) is None:
                raise InvalidRequest(
                    f"secret {name} is not set on the coordinator "
                    f"(flota secret set {name}, or set it in the coordinator's environment)"
                )
        pin = sub.placement.node
        if pin and self.rec.fleet.find(pin) is None:
            raise InvalidRequest(f"unknown node {show(pin)} (see: flota nodes)")
        run_id = new_run_id(self.rec.store.run_exists)
        repo = None
        if sub.repo_path:
            repo = await asyncio.to_thread(
                push_base,
                sub.repo_path,
                sub.repo_remote,
                sub.repo_ref,
                sub.from_working_tree,
                run_id,
                self.config.push_timeout_s,
            )
        now = self.wall()
        retries = self.config.default_retries if sub.retries < 0 else sub.retries
        run = Run(
            id=run_id,
            name=sub.name,
            status=RunStatus.RUNNING,
            created_at=now,
            repo_url=repo.url if repo else "",
            base_commit=repo.base_commit if repo else "",
            budget_usd=sub.run_budget_usd,
        )
        ids = {task.name: f"{run_id}.{i}" for i, task in enumerate(sub.tasks, 1) if task.name}
        for i, task in enumerate(sub.tasks, 1):
            run.jobs.append(
                Job(
                    id=f"{run_id}.{i}",
                    run_id=run_id,
                    index=i,
                    name=task.name or (task.command or task.prompt)[:80],
                    agent=task.agent,
                    command=task.command,
                    prompt=task.prompt,
                    model=task.model,
                    max_steps=sub.max_steps,
                    budget_usd=sub.budget_usd,
                    api_base=sub.api_base,
                    check=task.check or sub.check,
                    requires=task.requires or self._model_requirement(task, sub.api_base),
                    report_paths=dict(task.report_paths),
                    status=JobStatus.WAITING if task.depends_on else JobStatus.QUEUED,
                    depends_on=tuple(ids[d] for d in task.depends_on),
                    role=task.role,
                    ignore_paths=task.ignore_paths,
                    created_at=now,
                    updated_at=now,
                    timeout_s=sub.timeout_s,
                    max_attempts=1 + retries,
                    resume_from_partial=sub.resume_from_partial,
                    allow_empty=sub.allow_empty,
                    secrets=sub.secrets,
                    # The template's variables, under the user's --env and --secret.
                    env={
                        **{k: v for k, v in task.env.items() if k not in sub.secrets},
                        **sub.env,
                    },
                    placement=sub.placement,
                    repo=repo,
                    wait_reason=outcomes.WAITING_ON_DEPS if task.depends_on else "waiting for a node",
                    input=task.input,
                    input_path=task.input_path,
                )
            )
        self.rec.planner.explain_new(
            [j for j in run.jobs if j.status == JobStatus.QUEUED]
        )  # why a job cannot start now, in the reply
        self.rec.submit(run)
        return run

    def _model_requirement(self, task: Task, api_base: str) -> str:
        """An llm job for a model some node serves locally goes only to such a node
        (lm_studio/ and ollama/ models always do); other models are reached from anywhere."""
        if task.agent != "llm" or api_base:
            return ""
        local = (
            task.model.startswith(("lm_studio/", "ollama/")) or task.model in self.rec.fleet.served_models()
        )
        return f"model:{task.model}" if local else ""

    def run(self, run_id: str) -> Run:
        check_id(run_id, "run id")
        run = self.rec.runs.get(run_id) or self.rec.store.get_run(run_id)
        if run is None:
            head, dot, _ = run_id.partition(".")
            if dot and (head in self.rec.runs or self.rec.store.run_exists(head)):
                raise NotFound(f"{run_id!r} is a job; its run is {head!r}")
            raise NotFound(f"no run {run_id!r} (see: flota status)")
        return run

    def job(self, job_id: str) -> Job:
        check_id(job_id, "job id")
        job = self.rec.jobs.get(job_id) or self.rec.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (job ids look like r1a2b3c.1)")
        return job

    def runs(self, limit: int, jobs_up_to: int = 0) -> list[Run]:
        """The latest runs; a live one with its jobs, the newest others too while all these
        jobs add up to `jobs_up_to` (the event stream's snapshot)."""
        stored = self.rec.store.list_runs(min(limit, 1000) if limit > 0 else 20, jobs_up_to)
        return [self.rec.runs.get(r.id, r) for r in stored]  # a live run with its jobs

    def job_active(self, job_id: str) -> bool:
        """Whether a job may still log more."""
        current = self.rec.jobs.get(job_id)
        return current is not None and current.status not in JOB_FINAL

    async def cancel(self, ident: str) -> list[str]:
        check_id(ident, "run or job id")
        rec = self.rec
        run = rec.runs.get(ident) or (rec.store.get_run(ident) if "." not in ident else None)
        if run is None and rec.jobs.get(ident) is None and rec.store.get_job(ident) is None:
            raise NotFound(f"no run or job {ident!r} (see: flota status)")
        jobs = run.jobs if run is not None else [self.job(ident)]
        return await rec.cancel(jobs)

    def retry(self, ident: str, failed_only: bool) -> tuple[Run, list[Job]]:
        """Run a job, or a run's jobs, again (`outcomes.to_retry` says which, or why not);
        the run and the jobs queued again."""
        check_id(ident, "run or job id")
        run_id, dot, _ = ident.partition(".")
        run = self.rec.current_run(run_id)
        if dot:
            job = next((j for j in run.jobs if j.id == ident), None) if run else None
            if run is None or job is None:
                raise NotFound(f"no job {ident!r} (see: flota status)")
            jobs, why = outcomes.to_retry([job], failed_only)
        else:
            if run is None:
                raise NotFound(f"no run {ident!r} (see: flota status)")
            jobs, why = outcomes.to_retry(run.jobs, failed_only, run.id)
        spent = outcomes.budget_spent(run.budget_usd, run.spent_usd)
        if why or spent:
            raise InvalidRequest(why or f"{spent}; nothing was retried")
        self.rec.retry(run, jobs)
        return run, jobs

    async def cleanup(self, run_id: str, report: Report = _quiet) -> tuple[int, list[str]]:
        """Worktrees removed on the nodes, and the nodes that could not be reached."""
        run = self.run(run_id)
        if run.status == RunStatus.RUNNING:
            raise InvalidRequest(f"run {run.id} is still running; cancel it or wait for it to end")
        removed, _, failed = await self._clean_nodes(run, False, report)
        return removed, [self._name(node_id) for node_id in failed]

    async def prune(
        self, older_than_s: float, dry_run: bool, run_ids: Collection[str], report: Report = _quiet
    ) -> Pruning:
        """The runs that ended `older_than_s` ago or more (only `run_ids` among them, when
        given): their refs on their remotes, then their worktrees and mirror refs on the
        nodes, then their rows. A run is forgotten only once every place that held its refs
        confirmed; otherwise it is kept, with the reason, for a later prune to finish."""
        cutoff = self.wall() - older_than_s
        ended = self.rec.store.ended_runs(cutoff)
        runs = [r for r in ended if r.id not in self.rec.runs and (not run_ids or r.id in run_ids)]
        out = Pruning(dry_run, older_than_s, [PrunedRun(r, _nodes_of(r)) for r in runs])
        await self._list_refs(out, report)
        if dry_run:
            return out
        for remote in out.remotes:
            left = await self._delete_refs(remote, report)
            for item in out.runs:
                if item.run.repo_url == remote.url and left.intersection(item.refs):
                    item.kept = remote.error
        for item in out.runs:
            if item.kept:
                continue
            worktrees, refs, failed = await self._clean_nodes(item.run, True, report)
            out.worktrees_removed += worktrees
            out.node_refs_removed += refs
            failed = {n: why for n, why in failed.items() if not self._removed(n)}  # a removed node: not ours
            out.nodes_unreachable += [n for n in failed if n not in out.nodes_unreachable]
            item.kept = "; ".join(f"node {self._name(n)}: {why}" for n, why in failed.items())
        forget = [item for item in out.runs if not item.kept]
        for done, item in enumerate(forget, 1):
            item.forgotten = self.rec.store.delete_run(item.run.id)
            if item.forgotten:
                self.rec.hub.run_removed(item.run)
            report("forgetting the runs", done, len(forget))
        return out

    async def _list_refs(self, out: Pruning, report: Report) -> None:
        """Each remote's refs of the runs; a remote that cannot be listed keeps its runs."""
        urls = sorted({item.run.repo_url for item in out.runs if item.run.repo_url})
        what = "listing the runs' refs on their remotes"
        for done, url in enumerate(urls):
            report(what, done, len(urls))
            remote = RemoteRefs(url)
            out.remotes.append(remote)
            try:
                found = await asyncio.to_thread(list_run_refs, url, self.config.push_timeout_s)
            except RepoError as exc:
                remote.error, found = str(exc), {}
            for item in out.runs:
                if item.run.repo_url == url:
                    item.refs, item.kept = found.get(item.run.id, []), remote.error
                    remote.refs += item.refs
        if urls:
            report(what, len(urls), len(urls))

    async def _delete_refs(self, remote: RemoteRefs, report: Report) -> set[str]:
        """Delete the remote's refs in pushes of REFS_PER_PUSH, so that progress shows; the
        refs left after a failed push (`error` says why)."""
        left = [] if remote.error else list(remote.refs)
        what = f"removing {len(left)} refs from {remote.url}"
        while left:
            report(what, remote.removed, len(remote.refs))
            batch = left[:REFS_PER_PUSH]
            try:
                await asyncio.to_thread(delete_refs, remote.url, batch, self.config.push_timeout_s)
            except RepoError as exc:
                remote.error = str(exc)
                return set(left)
            del left[: len(batch)]
            remote.removed += len(batch)
            if not left:
                report(what, remote.removed, len(remote.refs))
        return set()

    async def _clean_nodes(self, run: Run, refs: bool, report: Report) -> tuple[int, int, dict[str, str]]:
        """Remove a run's worktrees on each node that ran it, one job per call so that
        progress shows (and no call outlasts its deadline); with `refs`, then the run's refs
        in the node's mirrors. (worktrees, refs removed, {node id: why it was not cleaned})."""
        worktrees = ref_count = 0
        failed: dict[str, str] = {}
        for node_id in _nodes_of(run):
            steps = [(j.id, False) for j in run.jobs if any(a.node_id == node_id for a in j.attempts)]
            steps += [(run.id, True)] if refs else []
            what = f"removing worktrees{' and refs' if refs else ''} of {run.id} on {self._name(node_id)}"
            report(what, 0, len(steps))
            try:
                for done, (ident, with_refs) in enumerate(steps, 1):
                    removed, deleted = await self.rec.dispatch.cleanup(node_id, ident, with_refs)
                    worktrees, ref_count = worktrees + removed, ref_count + deleted
                    report(what, done, len(steps))
            except NodeCallError as exc:  # one node's failure must not hide the others' work
                failed[node_id] = str(exc)
        return worktrees, ref_count, failed

    def _name(self, node_id: str) -> str:
        entry = self.rec.fleet.get(node_id)
        return entry.name if entry else node_id

    def _removed(self, node_id: str) -> bool:
        entry = self.rec.fleet.get(node_id)
        return entry is None or entry.removed


def _nodes_of(run: Run) -> list[str]:
    return sorted({a.node_id for j in run.jobs for a in j.attempts})


def _csr_node_id(csr_pem: bytes) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        return None
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        return None
    cn = str(cns[0].value)
    if not cn.startswith("node:") or not NODE_ID_RE.match(cn[5:]):
        return None
    return cn[5:]
