"""The Coordinator and Enrollment gRPC services.

Every Coordinator call names the role it needs (admin for the CLI, node for
RegisterNode) and is refused with PERMISSION_DENIED otherwise. Errors from the inside
are translated once, here, into status codes with a one-line message.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from coordinator.config import CoordinatorConfig
from coordinator.convert import job_to_pb, run_to_pb
from coordinator.errors import CoordinatorError, InvalidRequest, NotFound, RepoError
from coordinator.gitbase import push_base
from coordinator.models import JOB_FINAL, Job, JobPlacement, NodeRecord, Run
from coordinator.pki import CertificateAuthority, PkiError, make_token, secret_hash, token_matches
from coordinator.reconcile import Reconciler, new_run_id
from coordinator.registry import NodeEntry
from coordinator.secrets import Keyring
from protos.contract import JoinToken, TokenError, fingerprint
from protos.flota.v1 import coordinator_pb2, coordinator_pb2_grpc
from protos.limits import ENV_KEY_RE, LABEL_KEY_RE, LABEL_VALUE_RE, NAME_RE, NODE_ID_RE, PROFILE_RE
from protos.peer import peer_role

__all__ = ["CoordinatorServicer", "EnrollmentServicer"]

log = logging.getLogger("flota.coordinator.api")

T = TypeVar("T")

MAX_TASKS = 1000
MAX_COMMAND = 64 * 1024
LOG_CHUNK_BYTES = 1 << 20
# Run, job and attempt ids as the coordinator makes them (r1a2b3c, r1a2b3c.1, r1a2b3c.1.a2)
# and as nodes accept them: anything else names nothing.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _show(value: str) -> str:
    """A value for an error line: quoted and at most ~200 characters (gRPC clients refuse
    status trailers over 8 KiB: an echoed 100 kB id would reach them as RESOURCE_EXHAUSTED)."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _check_id(value: str, what: str) -> str:
    if not ID_RE.match(value) or ".." in value:
        raise InvalidRequest(f"invalid {what} {_show(value)}")
    return value


def _check_repo_request(r: coordinator_pb2.RepoRequest) -> None:
    """What push_base would hand to git, and echo whole in its errors."""
    for what, value, limit in (("path", r.path, 4096), ("remote", r.remote, 4096), ("ref", r.ref, 256)):
        if len(value) > limit or _CONTROL.search(value) or value.startswith("-"):
            raise InvalidRequest(f"invalid repository {what} {_show(value)}")
    if "::" in r.remote.split("/", 1)[0]:  # <transport>::<address>: ext::, fd::, remote helpers
        raise InvalidRequest(f"invalid remote {_show(r.remote)} (remote helpers are not allowed)")


_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (RepoError, grpc.StatusCode.FAILED_PRECONDITION),
    (CoordinatorError, grpc.StatusCode.FAILED_PRECONDITION),
]


def _role(role: str) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Require a caller role, and map the coordinator's errors to status codes."""

    def wrap(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def checked(self: Any, request: Any, context: Any) -> T:
            have, _ = peer_role(context)
            if have != role:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"this call needs a {role} certificate"
                )
            try:
                return await method(self, request, context)
            except CoordinatorError as exc:
                code = next(c for t, c in _CODES if isinstance(exc, t))
                await context.abort(code, str(exc))
                raise  # unreachable: abort raises

        return checked

    return wrap


def _stream_role(role: str) -> Callable[[Callable[..., AsyncIterator[T]]], Callable[..., AsyncIterator[T]]]:
    def wrap(method: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
        @functools.wraps(method)
        async def checked(self: Any, request: Any, context: Any) -> AsyncIterator[T]:
            have, _ = peer_role(context)
            if have != role:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"this call needs a {role} certificate"
                )
            try:
                async for item in method(self, request, context):
                    yield item
            except CoordinatorError as exc:
                code = next(c for t, c in _CODES if isinstance(exc, t))
                await context.abort(code, str(exc))

        return checked

    return wrap


def _check_placement(p: coordinator_pb2.PlacementSpec) -> JobPlacement:
    for key, value in p.labels.items():
        if not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(value):
            raise InvalidRequest(f"invalid label {key}={value} (letters, digits, . _ - / :)")
    for net in [*p.networks, *p.avoid_networks]:
        if not PROFILE_RE.match(net):
            raise InvalidRequest(f"invalid network profile {net!r}")
    r = p.resources
    if not (0 <= r.cpus <= 4096 and 0 <= r.memory_mb <= 2**24 and 0 <= r.gpus <= 64):
        raise InvalidRequest("resource request out of range")
    return JobPlacement(
        node=p.node,
        labels=dict(p.labels),
        networks=tuple(p.networks),
        avoid_networks=tuple(p.avoid_networks),
        exclusive=p.exclusive,
        spread=p.spread,
        cpus=r.cpus,
        memory_mb=r.memory_mb,
        gpus=r.gpus,
    )


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(
        self, rec: Reconciler, ca: CertificateAuthority, config: CoordinatorConfig, join_address: str
    ) -> None:
        self.rec = rec
        self.ca = ca
        self.config = config
        self.join_address = join_address

    # --- nodes ----------------------------------------------------------------------------

    async def RegisterNode(
        self, request: coordinator_pb2.RegisterNodeRequest, context: Any
    ) -> coordinator_pb2.RegisterNodeReply:
        role, node_id = peer_role(context)
        if role != "node" or node_id != request.info.id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "a node may only register itself")
        entry = self.rec.nodes.get(node_id)
        if entry is None or entry.removed or entry.fingerprint != _peer_fingerprint(context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this certificate is not the one enrolled")
        addresses = [a for a in request.info.addresses if _valid_address(a)][:16]
        peer_ip = _peer_ip(context.peer())
        if peer_ip and addresses:
            port = addresses[0].rpartition(":")[2]
            addresses.append(f"[{peer_ip}]:{port}" if ":" in peer_ip else f"{peer_ip}:{port}")
        if request.leaving:
            self.rec.goodbye(node_id, leaving=True)
        elif not self.rec.hint(node_id, addresses):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "this node is not enrolled (or was removed)"
            )
        return coordinator_pb2.RegisterNodeReply(heartbeat_s=self.config.heartbeat_s)

    @_role("admin")
    async def ListNodes(
        self, request: coordinator_pb2.ListNodesRequest, context: Any
    ) -> coordinator_pb2.ListNodesReply:
        entries = sorted(self.rec.nodes.values(), key=lambda e: e.name)
        return coordinator_pb2.ListNodesReply(nodes=[self._node_status(e) for e in entries if not e.removed])

    def _node_status(self, entry: NodeEntry) -> coordinator_pb2.NodeStatus:
        link = self.rec.links.get(entry.id)
        status = coordinator_pb2.NodeStatus(
            state="draining" if entry.draining and entry.state == "online" else entry.state,
            address=link.address if link else "",
            last_seen=entry.last_seen_wall,
            error=link.last_error if link and entry.state != "online" else "",
        )
        if entry.info is not None:
            status.info.CopyFrom(entry.info)
            status.info.running = len(entry.reservations)
        # Who a node is comes from its enrollment, not from what it says about itself.
        status.info.id, status.info.name = entry.id, entry.name
        return status

    @_role("admin")
    async def SetSecret(
        self, request: coordinator_pb2.SetSecretRequest, context: Any
    ) -> coordinator_pb2.SecretsReply:
        self.rec.keyring.set(request.name, request.value)
        return coordinator_pb2.SecretsReply(names=self.rec.keyring.names())

    @_role("admin")
    async def DeleteSecret(
        self, request: coordinator_pb2.DeleteSecretRequest, context: Any
    ) -> coordinator_pb2.SecretsReply:
        self.rec.keyring.delete(request.name)
        return coordinator_pb2.SecretsReply(names=self.rec.keyring.names())

    @_role("admin")
    async def ListSecrets(
        self, request: coordinator_pb2.ListSecretsRequest, context: Any
    ) -> coordinator_pb2.SecretsReply:
        return coordinator_pb2.SecretsReply(names=self.rec.keyring.names())

    @_role("admin")
    async def RemoveNode(
        self, request: coordinator_pb2.RemoveNodeRequest, context: Any
    ) -> coordinator_pb2.RemoveNodeReply:
        entry = self._node(request.node)
        given_up = await self.rec.remove(entry)
        return coordinator_pb2.RemoveNodeReply(id=entry.id, name=entry.name, attempts_given_up=given_up)

    def _node(self, name_or_id: str) -> NodeEntry:
        if not (NAME_RE.match(name_or_id) or NODE_ID_RE.match(name_or_id)):
            raise InvalidRequest(f"invalid node name or id {_show(name_or_id)}")
        found = [e for e in self.rec.nodes.values() if not e.removed and name_or_id in (e.id, e.name)]
        if not found:
            raise NotFound(f"no node {_show(name_or_id)} (see: flota nodes)")
        return found[0]

    @_role("admin")
    async def DrainNode(
        self, request: coordinator_pb2.DrainNodeRequest, context: Any
    ) -> coordinator_pb2.NodeStatus:
        entry = self._node(request.node)
        self.rec.drain(entry, not request.undo)
        return self._node_status(entry)

    @_role("admin")
    async def CreateToken(
        self, request: coordinator_pb2.CreateTokenRequest, context: Any
    ) -> coordinator_pb2.CreateTokenReply:
        ttl = request.ttl_s or self.config.token_ttl_s
        if not 10 <= ttl <= 7 * 86400:
            raise InvalidRequest("token lifetime must be between 10 seconds and 7 days")
        token = make_token(self.ca.fingerprint)
        now = time.time()
        self.rec.store.add_token(token.id, secret_hash(token), now, now + ttl)
        return coordinator_pb2.CreateTokenReply(
            token=str(token), join_address=self.join_address, expires_at=now + ttl
        )

    # --- runs -----------------------------------------------------------------------------

    @_role("admin")
    async def SubmitRun(self, request: coordinator_pb2.SubmitRunRequest, context: Any) -> coordinator_pb2.Run:
        if not 0 < len(request.tasks) <= MAX_TASKS:
            raise InvalidRequest(f"a run needs 1 to {MAX_TASKS} tasks")
        for task in request.tasks:
            _check_task(task)
        _check_agent_limits(request)
        if _CONTROL.search(request.name):
            raise InvalidRequest("a run name has no control characters")
        for task in request.tasks:
            if _CONTROL.search(task.name) or "\0" in task.prompt:
                raise InvalidRequest("a task name has no control characters, a prompt no NUL")
        for key, value in request.env.items():
            if not ENV_KEY_RE.match(key):
                raise InvalidRequest(f"invalid environment variable name {_show(key)}")
            if "\0" in value:  # no environment can hold it; the node refuses the job
                raise InvalidRequest(f"the value of {key} has a NUL byte")
        if not 0 <= request.timeout_s <= 7 * 86400:
            raise InvalidRequest("timeout must be between 0 (none) and 7 days")
        if len(request.secrets) > 64:
            raise InvalidRequest("at most 64 secrets per run")
        for name in request.secrets:
            Keyring.check_name(name)
            if name in request.env:
                raise InvalidRequest(f"{name} is given both as --env and as --secret")
            if self.rec.keyring.resolve(name) is None:
                raise InvalidRequest(
                    f"secret {name} is not set on the coordinator "
                    f"(flota secret set {name}, or set it in the coordinator's environment)"
                )
        if not -1 <= request.retries <= 10:
            raise InvalidRequest("retries must be between 0 and 10")
        placement = _check_placement(request.placement)
        if placement.node and not any(
            placement.node in (e.id, e.name) for e in self.rec.nodes.values() if not e.removed
        ):
            raise InvalidRequest(f"unknown node {_show(placement.node)} (see: flota nodes)")
        run_id = new_run_id(self.rec.store.run_exists)
        repo = None
        if request.repo.path:
            r = request.repo
            _check_repo_request(r)
            repo = await asyncio.to_thread(push_base, r.path, r.remote, r.ref, r.from_working_tree, run_id)
        now = time.time()
        retries = self.config.default_retries if request.retries < 0 else request.retries
        run = Run(
            id=run_id,
            name=request.name or "",
            status="running",
            created_at=now,
            repo_url=repo.url if repo else "",
            base_commit=repo.base_commit if repo else "",
        )
        for i, task in enumerate(request.tasks, 1):
            run.jobs.append(
                Job(
                    id=f"{run_id}.{i}",
                    run_id=run_id,
                    index=i,
                    name=task.name or (task.command or task.prompt)[:80],
                    agent=task.agent or "shell",
                    command=task.command,
                    prompt=task.prompt,
                    model=task.model,
                    max_steps=request.max_steps,
                    budget_usd=request.budget_usd,
                    api_base=request.api_base,
                    check=request.check,
                    requires=task.requires or self._model_requirement(task, request.api_base),
                    report_paths=dict(task.report_paths),
                    status="queued",
                    created_at=now,
                    updated_at=now,
                    timeout_s=request.timeout_s,
                    max_attempts=1 + retries,
                    resume_from_partial=request.resume_from_partial,
                    secrets=tuple(dict.fromkeys(request.secrets)),
                    env=dict(request.env),
                    placement=placement,
                    repo=repo,
                    wait_reason="waiting for a node",
                )
            )
        self.rec.submit(run)
        return run_to_pb(run, self.rec.node_names())

    def _model_requirement(self, task: coordinator_pb2.TaskSpec, api_base: str) -> str:
        """An llm job for a model some node serves locally goes only to such a node
        (lm_studio/ and ollama/ models always do); other models are reached from anywhere."""
        if task.agent != "llm" or api_base:
            return ""
        served = {
            m.model for e in self.rec.nodes.values() if e.info is not None for m in e.info.facts.local_models
        }
        local = task.model.startswith(("lm_studio/", "ollama/")) or task.model in served
        return f"model:{task.model}" if local else ""

    def _run(self, run_id: str) -> Run:
        _check_id(run_id, "run id")
        run = self.rec.runs.get(run_id) or self.rec.store.get_run(run_id)
        if run is None:
            head, dot, _ = run_id.partition(".")
            if dot and (head in self.rec.runs or self.rec.store.run_exists(head)):
                raise NotFound(f"{run_id!r} is a job; its run is {head!r}")
            raise NotFound(f"no run {run_id!r} (see: flota status)")
        return run

    def _job(self, job_id: str) -> Job:
        _check_id(job_id, "job id")
        job = self.rec.jobs.get(job_id) or self.rec.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (job ids look like r1a2b3c.1)")
        return job

    @_role("admin")
    async def GetRun(self, request: coordinator_pb2.GetRunRequest, context: Any) -> coordinator_pb2.Run:
        return run_to_pb(self._run(request.run_id), self.rec.node_names())

    @_role("admin")
    async def ListRuns(
        self, request: coordinator_pb2.ListRunsRequest, context: Any
    ) -> coordinator_pb2.ListRunsReply:
        limit = min(request.limit, 1000) if request.limit > 0 else 20
        names = self.rec.node_names()
        return coordinator_pb2.ListRunsReply(
            runs=[run_to_pb(r, names, with_jobs=False) for r in self.rec.store.list_runs(limit)]
        )

    @_role("admin")
    async def GetJob(self, request: coordinator_pb2.GetJobRequest, context: Any) -> coordinator_pb2.Job:
        return job_to_pb(self._job(request.job_id), self.rec.node_names())

    @_stream_role("admin")
    async def WatchRun(
        self, request: coordinator_pb2.WatchRunRequest, context: Any
    ) -> AsyncIterator[coordinator_pb2.RunEvent]:
        _check_id(request.run_id, "run id")
        watcher = self.rec.hub.watch(request.run_id, request.logs)  # before reading: no change slips by
        try:
            run = self._run(request.run_id)
            names = self.rec.node_names()
            for job in run.jobs:
                yield coordinator_pb2.RunEvent(job=job_to_pb(job, names))
            if run.status != "running":
                yield coordinator_pb2.RunEvent(run=run_to_pb(run, names))
                return
            while not watcher.overflowed:
                event = await watcher.queue.get()
                yield event
                if event.WhichOneof("kind") == "run":
                    return
        finally:
            self.rec.hub.unwatch(request.run_id, watcher)

    @_stream_role("admin")
    async def StreamLogs(
        self, request: coordinator_pb2.StreamLogsRequest, context: Any
    ) -> AsyncIterator[coordinator_pb2.LogChunk]:
        job = self._job(request.job_id)
        waiter = self.rec.hub.log_waiter(job.id)
        after = 0
        try:
            while True:
                waiter.clear()
                rows = self.rec.store.logs(job.id, after)
                i = 0
                while i < len(rows):
                    attempt = rows[i][1]
                    j, size = i, 0
                    # One chunk per attempt, and far below the 4 MiB message limit.
                    while j < len(rows) and rows[j][1] == attempt and (j == i or size < LOG_CHUNK_BYTES):
                        size += len(rows[j][2]) + 8
                        j += 1
                    yield coordinator_pb2.LogChunk(
                        job_id=job.id, attempt_id=attempt, lines=[r[2] for r in rows[i:j]]
                    )
                    i = j
                if rows:
                    after = rows[-1][0]
                    continue
                current = self.rec.jobs.get(job.id)
                if not request.follow or current is None or current.status in JOB_FINAL:
                    return
                try:
                    await asyncio.wait_for(waiter.wait(), 1.0)
                except TimeoutError:
                    pass
        finally:
            self.rec.hub.drop_log_waiter(job.id, waiter)

    @_role("admin")
    async def Cancel(
        self, request: coordinator_pb2.CancelRequest, context: Any
    ) -> coordinator_pb2.CancelReply:
        ident = _check_id(request.id, "run or job id")
        run = self.rec.runs.get(ident) or (self.rec.store.get_run(ident) if "." not in ident else None)
        if run is None and self.rec.jobs.get(ident) is None and self.rec.store.get_job(ident) is None:
            raise NotFound(f"no run or job {ident!r} (see: flota status)")
        jobs = run.jobs if run is not None else [self._job(ident)]
        return coordinator_pb2.CancelReply(cancelled=await self.rec.cancel(jobs))

    @_role("admin")
    async def Cleanup(
        self, request: coordinator_pb2.CleanupRequest, context: Any
    ) -> coordinator_pb2.CleanupReply:
        run = self._run(request.run_id)
        if run.status == "running":
            raise InvalidRequest(f"run {run.id} is still running; cancel it or wait for it to end")
        node_ids = {a.node_id for j in run.jobs for a in j.attempts}
        removed, unreachable = 0, []
        for node_id in sorted(node_ids):
            link = self.rec.links.get(node_id)
            name = self.rec.nodes[node_id].name if node_id in self.rec.nodes else node_id
            if link is None or not link.connected:
                unreachable.append(name)
                continue
            try:
                removed += await link.cleanup(run.id)
            except Exception as exc:  # one node's failure must not hide the others' work
                log.warning("cleanup on %s failed: %s", name, exc)
                unreachable.append(name)
        return coordinator_pb2.CleanupReply(worktrees_removed=removed, nodes_unreachable=unreachable)


_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}\Z")
_PATH_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+){0,7}\Z")
REPORT_KEYS = frozenset({"cost_usd", "steps", "tokens_in", "tokens_out"})


def _text_ok(text: str, limit: int = MAX_COMMAND) -> bool:
    return bool(text.strip()) and len(text) <= limit and "\0" not in text


def _check_task(task: coordinator_pb2.TaskSpec) -> None:
    agent = task.agent or "shell"
    if agent == "llm":
        if not _text_ok(task.prompt):
            raise InvalidRequest("an llm task needs a prompt (at most 64 KiB, no NUL)")
        if not _MODEL_RE.match(task.model):
            raise InvalidRequest(
                f"invalid model {_show(task.model)} (a litellm model string, e.g. openai/gpt-4o)"
            )
        return
    if agent != "shell" and (
        not NAME_RE.match(agent) or (task.requires and not NAME_RE.match(task.requires))
    ):
        raise InvalidRequest(f"unknown agent {agent!r} (shell, llm, or an agent CLI template)")
    if not _text_ok(task.command):
        raise InvalidRequest("every task needs a command (at most 64 KiB, no NUL)")
    if task.model and not _MODEL_RE.match(task.model):
        raise InvalidRequest(f"invalid model {_show(task.model)}")
    for key, path in task.report_paths.items():
        if key not in REPORT_KEYS or not _PATH_RE.match(path):
            raise InvalidRequest(
                f"invalid report path {key}={path!r} (keys: {', '.join(sorted(REPORT_KEYS))})"
            )


def _check_agent_limits(request: coordinator_pb2.SubmitRunRequest) -> None:
    if not 0 <= request.max_steps <= 10_000:
        raise InvalidRequest("max steps must be between 0 (the agent's default) and 10000")
    if not 0 <= request.budget_usd <= 100_000 or request.budget_usd != request.budget_usd:
        raise InvalidRequest("budget must be between 0 (none) and 100000 USD")
    if request.api_base and (
        not request.api_base.startswith(("http://", "https://"))
        or len(request.api_base) > 500
        or any(ch.isspace() or ch == "\0" for ch in request.api_base)
    ):
        raise InvalidRequest(f"invalid api base {request.api_base!r} (an http:// or https:// URL)")
    if request.check and not _text_ok(request.check):
        raise InvalidRequest("the check command is at most 64 KiB, without NUL")


def _valid_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return bool(NAME_RE.match(host))
    return True


def _peer_fingerprint(context: Any) -> str:
    pems = context.auth_context().get("x509_pem_cert") or []
    if len(pems) != 1:
        return ""
    return fingerprint(ssl.PEM_cert_to_DER_cert(pems[0].decode()))


def _peer_ip(peer: str) -> str:
    """'ipv4:10.0.0.2:5555' -> '10.0.0.2'; 'ipv6:[::1]:5555' -> '::1'."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


class EnrollmentServicer(coordinator_pb2_grpc.EnrollmentServicer):
    """Join: one-time token + CSR -> certificate. The channel is TLS with the CA's own
    certificate, which the node has already checked against the token's pin."""

    def __init__(self, rec: Reconciler, ca: CertificateAuthority, api_address: str) -> None:
        self.rec = rec
        self.ca = ca
        self.api_address = api_address

    async def Join(self, request: coordinator_pb2.JoinRequest, context: Any) -> coordinator_pb2.JoinReply:
        try:
            token = JoinToken.parse(request.token)
        except TokenError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        name = request.name
        if not NAME_RE.match(name):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid node name {name!r}")
        stored = self.rec.store.token(token.id)
        now = time.time()
        # One answer for unknown, wrong and used tokens: a guesser learns nothing.
        if stored is None or not token_matches(token, stored[0]) or stored[2] is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "invalid or already used join token")
        assert stored is not None
        if stored[1] < now:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "join token expired; create a new one")
        if token.ca_fingerprint != self.ca.fingerprint:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "the token pins another CA")
        node_id = _csr_node_id(request.csr_pem)
        if node_id is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the CSR must name the node as CN=node:<id>"
            )
        assert node_id is not None
        if node_id in self.rec.nodes and not self.rec.nodes[node_id].removed:
            # An id is public (mDNS); a token holder must not get a second certificate for it.
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"node id {node_id} is already enrolled; to enroll this machine again, "
                "delete its identity directory first",
            )
        taken = next(
            (e for e in self.rec.nodes.values() if e.name == name and e.id != node_id and not e.removed), None
        )
        if taken is not None:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"the name {name!r} belongs to node {taken.id}; join with another --name",
            )
        try:
            cert_pem = self.ca.sign_node_csr(request.csr_pem, node_id)
        except PkiError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not self.rec.store.use_token(token.id, node_id, now):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "invalid or already used join token")
        der = ssl.PEM_cert_to_DER_cert(cert_pem.decode())
        self.rec.store.enroll_node(NodeRecord(node_id, name, fingerprint(der), now))
        self.rec.enrolled(node_id, name, fingerprint(der))
        log.info("node %s (%s) joined", name, node_id)
        return coordinator_pb2.JoinReply(
            certificate_pem=cert_pem,
            ca_pem=self.ca.cert_pem,
            node_id=node_id,
            coordinator_address=self.api_address,
        )


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
