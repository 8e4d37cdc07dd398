"""The Coordinator and Enrollment gRPC services: check the caller, validate and
translate the request, call the service, translate the answer.

Every Coordinator call names the role it needs (admin for the CLI, node for
RegisterNode) and is refused with PERMISSION_DENIED otherwise. The coordinator's errors
are mapped to status codes once, by CODES, with their one-line message.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from coordinator import errors, validate
from coordinator.convert import job_to_pb, node_status_to_pb, pruning_to_pb, run_to_pb
from coordinator.service import NodeStatus, Report, Service
from coordinator.stream import Item, Topics, frames, parse_topics
from protos.contract import FLOTA_VERSION, OLDEST_PROTOCOL, PROTOCOL, fingerprint
from protos.flota.v1 import coordinator_pb2, coordinator_pb2_grpc
from protos.peer import peer_role

__all__ = ["CODES", "CoordinatorServicer", "EnrollmentServicer", "add_to_server"]

T = TypeVar("T")
SNAPSHOT_RUNS = 100  # the most recent runs in an event stream's snapshot (live ones with their jobs)
SNAPSHOT_JOBS = 2_000  # and the jobs of the newest of them (ended ones too), up to this many

LOG_CHUNK_BYTES = 1 << 20

# Every class of the coordinator's error tree, most specific first.
CODES: list[tuple[type[errors.CoordinatorError], grpc.StatusCode]] = [
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.PkiError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Refused, grpc.StatusCode.PERMISSION_DENIED),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.RepoError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.MissingSecret, grpc.StatusCode.FAILED_PRECONDITION),
    # The node stops on it (node_agent/register.py): only an upgrade on one side helps.
    (errors.Incompatible, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    # Not UNAVAILABLE: the coordinator answered; the CLI would say it cannot be reached.
    (errors.StoreError, grpc.StatusCode.ABORTED),
    (errors.NodeCallError, grpc.StatusCode.UNAVAILABLE),
    (errors.CoordinatorError, grpc.StatusCode.FAILED_PRECONDITION),
]


def code_for(exc: errors.CoordinatorError) -> grpc.StatusCode:
    return next(code for kind, code in CODES if isinstance(exc, kind))


async def _require(context: Any, role: str) -> None:
    have, _ = peer_role(context)
    if have != role:
        needed = f"an {role}" if role[:1] in ("a", "e", "i", "o", "u") else f"a {role}"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"this call needs {needed} certificate")


def _role(role: str) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Require a caller role (when given), and map the coordinator's errors to codes."""

    def wrap(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def checked(self: Any, request: Any, context: Any) -> T:
            if role:
                await _require(context, role)
            try:
                return await method(self, request, context)
            except errors.CoordinatorError as exc:
                await context.abort(code_for(exc), str(exc))
                raise  # unreachable: abort raises

        return checked

    return wrap


def _stream_role(role: str) -> Callable[[Callable[..., AsyncIterator[T]]], Callable[..., AsyncIterator[T]]]:
    def wrap(method: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
        @functools.wraps(method)
        async def checked(self: Any, request: Any, context: Any) -> AsyncIterator[T]:
            await _require(context, role)
            try:
                async for item in method(self, request, context):
                    yield item
            except errors.CoordinatorError as exc:
                await context.abort(code_for(exc), str(exc))

        return checked

    return wrap


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, service: Service, join_address: str) -> None:
        self.service = service
        self.join_address = join_address

    def _status(self, status: NodeStatus) -> coordinator_pb2.NodeStatus:
        return node_status_to_pb(status.entry, status.address, status.error, status.link)

    def _names(self) -> dict[str, str]:
        return self.service.rec.fleet.names()

    # --- nodes ----------------------------------------------------------------------------

    @_role("")
    async def RegisterNode(
        self, request: coordinator_pb2.RegisterNodeRequest, context: Any
    ) -> coordinator_pb2.RegisterNodeReply:
        role, node_id = peer_role(context)
        if role != "node" or node_id != request.info.id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "a node may only register itself")
        addresses = [a for a in request.info.addresses if validate.address_ok(a)][:16]
        peer_ip = _peer_ip(context.peer())
        if peer_ip and addresses:
            port = addresses[0].rpartition(":")[2]
            addresses.append(f"[{peer_ip}]:{port}" if ":" in peer_ip else f"{peer_ip}:{port}")
        heartbeat_s = self.service.register(
            node_id,
            _peer_fingerprint(context),
            addresses,
            request.leaving,
            request.info.protocol,
            request.info.version,
        )
        return coordinator_pb2.RegisterNodeReply(heartbeat_s=heartbeat_s)

    async def DialHome(
        self, request_iterator: AsyncIterator[coordinator_pb2.HomeFrame], context: Any
    ) -> AsyncIterator[coordinator_pb2.CoordinatorFrame]:
        """A node's own link (coordinator/home.py): only a node, as the node its
        certificate names; the stream lasts as long as the link."""
        role, node_id = peer_role(context)
        if role != "node":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this call needs a node certificate")
        try:
            home = await self.service.dial_home(node_id, _peer_fingerprint(context), _peer_address(context))
        except errors.CoordinatorError as exc:
            await context.abort(code_for(exc), str(exc))
        frames = home.serve(request_iterator)
        try:
            async for frame in frames:
                yield frame
        finally:
            await frames.aclose()

    @_role("admin")
    async def ListNodes(
        self, request: coordinator_pb2.ListNodesRequest, context: Any
    ) -> coordinator_pb2.ListNodesReply:
        return coordinator_pb2.ListNodesReply(
            nodes=[self._status(s) for s in self.service.nodes()],
            coordinator_version=FLOTA_VERSION,
            protocol=PROTOCOL,
            oldest_protocol=OLDEST_PROTOCOL,
        )

    @_role("admin")
    async def SetSecret(
        self, request: coordinator_pb2.SetSecretRequest, context: Any
    ) -> coordinator_pb2.SecretsReply:
        return coordinator_pb2.SecretsReply(names=self.service.set_secret(request.name, request.value))

    @_role("admin")
    async def DeleteSecret(
        self, request: coordinator_pb2.DeleteSecretRequest, context: Any
    ) -> coordinator_pb2.SecretsReply:
        return coordinator_pb2.SecretsReply(names=self.service.delete_secret(request.name))

    @_role("admin")
    async def ListSecrets(
        self, request: coordinator_pb2.ListSecretsRequest, context: Any
    ) -> coordinator_pb2.SecretsReply:
        return coordinator_pb2.SecretsReply(names=self.service.secrets())

    @_role("admin")
    async def RemoveNode(
        self, request: coordinator_pb2.RemoveNodeRequest, context: Any
    ) -> coordinator_pb2.RemoveNodeReply:
        entry, given_up = await self.service.remove(request.node)
        return coordinator_pb2.RemoveNodeReply(id=entry.id, name=entry.name, attempts_given_up=given_up)

    @_role("admin")
    async def DrainNode(
        self, request: coordinator_pb2.DrainNodeRequest, context: Any
    ) -> coordinator_pb2.NodeStatus:
        return self._status(self.service.drain(request.node, not request.undo))

    @_role("admin")
    async def CreateToken(
        self, request: coordinator_pb2.CreateTokenRequest, context: Any
    ) -> coordinator_pb2.CreateTokenReply:
        token, expires_at = self.service.create_token(request.ttl_s)
        return coordinator_pb2.CreateTokenReply(
            token=token, join_address=self.join_address, expires_at=expires_at
        )

    # --- runs -----------------------------------------------------------------------------

    @_role("admin")
    async def SubmitRun(self, request: coordinator_pb2.SubmitRunRequest, context: Any) -> coordinator_pb2.Run:
        sub = validate.submission(request)
        run = await self.service.submit(sub)
        return run_to_pb(run, self._names(), brief=sub.brief)

    @_role("admin")
    async def GetRun(self, request: coordinator_pb2.GetRunRequest, context: Any) -> coordinator_pb2.Run:
        return run_to_pb(self.service.run(request.run_id), self._names())

    @_role("admin")
    async def ListRuns(
        self, request: coordinator_pb2.ListRunsRequest, context: Any
    ) -> coordinator_pb2.ListRunsReply:
        names = self._names()
        runs = self.service.runs(request.limit)
        return coordinator_pb2.ListRunsReply(runs=[run_to_pb(r, names, with_jobs=False) for r in runs])

    @_role("admin")
    async def GetJob(self, request: coordinator_pb2.GetJobRequest, context: Any) -> coordinator_pb2.Job:
        return job_to_pb(self.service.job(request.job_id), self._names())

    @_stream_role("admin")
    async def WatchRun(
        self, request: coordinator_pb2.WatchRunRequest, context: Any
    ) -> AsyncIterator[coordinator_pb2.RunEvent]:
        validate.check_id(request.run_id, "run id")
        hub = self.service.rec.hub
        watcher = hub.watch(request.run_id, request.logs)  # before reading: no change slips by
        try:
            run = self.service.run(request.run_id)
            names = self._names()
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
            hub.unwatch(request.run_id, watcher)

    @_stream_role("admin")
    async def StreamEvents(  # type: ignore[override]  # bytes, not Events: see add_to_server
        self, request: coordinator_pb2.StreamEventsRequest, context: Any
    ) -> AsyncIterator[bytes]:
        """Events as the bytes the stream serialized once (add_to_server sends them as they are)."""
        topics = parse_topics(list(request.topics))
        log = self.service.rec.hub.stream
        reader = log.attach(topics, request.batch)  # before reading: nothing published from here on slips by
        try:
            replayed = log.replay(request.since) if request.since else None
            first = replayed if replayed is not None else self._snapshot(topics)
            for frame in frames([data for event, data in first if topics.wants(event)], request.batch):
                yield frame
            while True:
                live = await reader.take()
                if live is None:  # it fell behind: the state as it is now, then on
                    reader.resume()
                    live = [data for _, data in self._snapshot(topics)]
                for frame in frames(live, request.batch):
                    yield frame
        finally:
            log.detach(reader)

    def _snapshot(self, topics: Topics) -> list[Item]:
        names = self._names()
        nodes = [self._status(s) for s in self.service.nodes()] if topics.wants_kind("node") else []
        runs = (
            self.service.runs(SNAPSHOT_RUNS, SNAPSHOT_JOBS if topics.wants_kind("job") else 0)
            if topics.wants_kind("run", "job")
            else []
        )
        jobs = [job_to_pb(j, names) for r in runs for j in r.jobs] if topics.wants_kind("job") else []
        runs_pb = [run_to_pb(r, names, with_jobs=False) for r in runs]
        return self.service.rec.hub.stream.snapshot(nodes, runs_pb, jobs, topics)

    @_stream_role("admin")
    async def StreamLogs(
        self, request: coordinator_pb2.StreamLogsRequest, context: Any
    ) -> AsyncIterator[coordinator_pb2.LogChunk]:
        job = self.service.job(request.job_id)
        hub, store = self.service.rec.hub, self.service.rec.store
        waiter = hub.log_waiter(job.id)
        after = 0
        try:
            while True:
                waiter.clear()
                rows = store.logs(job.id, after)
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
                if not request.follow or not self.service.job_active(job.id):
                    return
                try:
                    await asyncio.wait_for(waiter.wait(), 1.0)
                except TimeoutError:
                    pass
        finally:
            hub.drop_log_waiter(job.id, waiter)

    @_role("admin")
    async def Cancel(
        self, request: coordinator_pb2.CancelRequest, context: Any
    ) -> coordinator_pb2.CancelReply:
        return coordinator_pb2.CancelReply(cancelled=await self.service.cancel(request.id))

    @_role("admin")
    async def Retry(self, request: coordinator_pb2.RetryRequest, context: Any) -> coordinator_pb2.RetryReply:
        run, jobs = self.service.retry(request.id, request.failed)
        return coordinator_pb2.RetryReply(retried=[j.id for j in jobs], run=run_to_pb(run, self._names()))

    @_stream_role("admin")
    async def Cleanup(
        self, request: coordinator_pb2.CleanupRequest, context: Any
    ) -> AsyncIterator[coordinator_pb2.CleanupEvent]:
        async for step, done in _with_progress(lambda report: self.service.cleanup(request.run_id, report)):
            if step is not None:
                yield coordinator_pb2.CleanupEvent(progress=step)
            elif done is not None:
                removed, unreachable = done
                reply = coordinator_pb2.CleanupReply(worktrees_removed=removed, nodes_unreachable=unreachable)
                yield coordinator_pb2.CleanupEvent(done=reply)

    @_stream_role("admin")
    async def Prune(
        self, request: coordinator_pb2.PruneRequest, context: Any
    ) -> AsyncIterator[coordinator_pb2.PruneEvent]:
        asked = validate.prune(request)
        work = functools.partial(self.service.prune, asked.older_than_s, asked.dry_run, asked.run_ids)
        async for step, done in _with_progress(lambda report: work(report=report)):
            if step is not None:
                yield coordinator_pb2.PruneEvent(progress=step)
            elif done is not None:
                yield coordinator_pb2.PruneEvent(done=pruning_to_pb(done, self._names()))

    @_stream_role("admin")
    async def BatchResults(
        self, request: coordinator_pb2.BatchResultsRequest, context: Any
    ) -> AsyncIterator[coordinator_pb2.BatchResultsChunk]:
        """A run's jobs in input order, each with its input and result, in chunks of about
        a MiB (thousands of them would not fit in one GetRun reply)."""
        run = self.service.run(request.run_id)
        names = self._names()
        chunk, size = coordinator_pb2.BatchResultsChunk(), 0
        for job in sorted(run.jobs, key=lambda j: j.index):
            msg = job_to_pb(job, names, with_input=True)
            size += msg.ByteSize() + 8
            chunk.jobs.append(msg)
            if size >= LOG_CHUNK_BYTES:
                yield chunk
                chunk, size = coordinator_pb2.BatchResultsChunk(), 0
        if chunk.jobs:
            yield chunk


async def _with_progress(
    work: Callable[[Report], Awaitable[T]],
) -> AsyncIterator[tuple[coordinator_pb2.Progress | None, T | None]]:
    """Run `work`, yielding (progress, None) for each step it reports, then (None, result).
    Its errors are raised here; a caller that goes away cancels it."""
    steps: asyncio.Queue[coordinator_pb2.Progress | None] = asyncio.Queue()

    def report(what: str, done: int, total: int) -> None:
        steps.put_nowait(coordinator_pb2.Progress(what=what, done=done, total=total))

    task = asyncio.ensure_future(work(report))
    task.add_done_callback(lambda _: steps.put_nowait(None))
    try:
        while (step := await steps.get()) is not None:
            yield step, None
        yield None, task.result()
    finally:
        task.cancel()


def _peer_fingerprint(context: Any) -> str:
    pems = context.auth_context().get("x509_pem_cert") or []
    if len(pems) != 1:
        return ""
    return fingerprint(ssl.PEM_cert_to_DER_cert(pems[0].decode()))


def _peer_address(context: Any) -> str:
    """'ipv4:10.0.0.2:5555' -> '10.0.0.2:5555'; 'ipv6:[::1]:5555' -> '[::1]:5555'."""
    kind, _, rest = context.peer().partition(":")
    return rest if kind in ("ipv4", "ipv6") else ""


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

    def __init__(self, service: Service, api_address: str) -> None:
        self.service = service
        self.api_address = api_address

    @_role("")
    async def Join(self, request: coordinator_pb2.JoinRequest, context: Any) -> coordinator_pb2.JoinReply:
        joined = self.service.join(request.token, request.name, request.csr_pem)
        return coordinator_pb2.JoinReply(
            certificate_pem=joined.certificate_pem,
            ca_pem=joined.ca_pem,
            node_id=joined.node_id,
            coordinator_address=self.api_address,
        )


class _Handlers:
    """Stands in for the server while the generated code registers a servicer: what it
    would register, to be changed before the real server gets it."""

    def __init__(self) -> None:
        self.methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # made again from `methods` below

    def add_registered_method_handlers(
        self, service: str, methods: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.methods = dict(methods)


def add_to_server(servicer: CoordinatorServicer, server: grpc.aio.Server) -> None:
    """The generated registration, except that StreamEvents sends the bytes it is given:
    each event is serialized once, for every reader (coordinator/stream.py)."""
    found = _Handlers()
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, found)  # type: ignore[arg-type]
    methods = found.methods
    methods["StreamEvents"] = grpc.unary_stream_rpc_method_handler(
        servicer.StreamEvents,
        request_deserializer=coordinator_pb2.StreamEventsRequest.FromString,
        response_serializer=None,
    )
    service = "flota.v1.Coordinator"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
    server.add_registered_method_handlers(service, methods)
