"""The Node gRPC service: accepts work only from the coordinator that certified it.

Error handling: a request holding a value the node will not use (an id that could leave
the workspace, a ref git would refuse, a URL naming a remote helper, a NUL byte bound for
argv or the environment) is refused with INVALID_ARGUMENT and one line, before anything
runs; never a traceback. Error lines quote at most 200 characters of a value: gRPC
clients refuse status trailers over 8 KiB. The rules are those of :mod:`protos.limits`,
which the coordinator's API applies too.

The work of each call lives in :class:`NodeCalls`, without gRPC: the Node gRPC service
(:class:`NodeServicer`, the coordinator dials us) and the dial-home client
(:mod:`node_agent.home`, we dial the coordinator) both run it, so a job, a cancel or a
session behave the same whichever way the link goes. It validates the wire message, then
hands the runner a model (:mod:`node_agent.convert`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from node_agent import convert
from node_agent.errors import CallRefused, WorkspaceError
from node_agent.hub import Hub
from node_agent.runner import Runner
from protos.flota.v1 import node_pb2, node_pb2_grpc, types_pb2
from protos.limits import (
    BASE_REF_RE,
    BRANCH_RE,
    COMMIT_RE,
    CONTROL_RE,
    ENV_KEY_RE,
    MAX_BUDGET_USD,
    MAX_COMMAND,
    MAX_DEPENDENCIES,
    MAX_IGNORE_PATHS,
    MAX_INPUT,
    MAX_MODEL,
    MAX_RESUME_BRANCHES,
    MAX_SECRET_VALUE,
    MAX_STEPS,
    MAX_TIMEOUT_S,
    NAME_RE,
    show,
    valid_api_base,
    valid_id,
    valid_ignore_path,
    valid_input_path,
    valid_ref,
    valid_url,
)
from protos.peer import peer_role

__all__ = ["NodeCalls", "NodeServicer", "validate_spec"]


def validate_spec(spec: types_pb2.JobSpec) -> str:
    """'' when the spec is acceptable, else one line saying what is wrong."""
    for name in ("job_id", "run_id", "attempt_id"):
        if not valid_id(getattr(spec, name)):
            return f"invalid {name} {show(getattr(spec, name))}"
    if not NAME_RE.match(spec.agent):  # shell, llm, or an agent CLI template's name
        return f"unknown agent {show(spec.agent)} (shell, llm, or an agent CLI's name)"
    if spec.agent == "llm":
        if not spec.prompt.strip() or not spec.model:
            return "an llm job needs a prompt and a model"
        if len(spec.prompt) > MAX_COMMAND:
            return "prompt too long"
    elif not spec.command.strip():
        return "empty command"
    if spec.api_base and not valid_api_base(spec.api_base):
        return "invalid api_base"
    if len(spec.check) > MAX_COMMAND or "\0" in spec.check:
        return "check command too long or with a NUL byte"
    if not 0 <= spec.max_steps <= MAX_STEPS or not 0 <= spec.budget_usd <= MAX_BUDGET_USD:
        return "max_steps or budget_usd out of range"
    if len(spec.command) > MAX_COMMAND or "\0" in spec.command:
        return "command too long or with a NUL byte"
    if not 0 <= spec.timeout_s <= MAX_TIMEOUT_S:
        return "timeout_s out of range"
    if "\0" in spec.prompt or "\0" in spec.name:
        return "prompt or name with a NUL byte"
    if len(spec.model) > MAX_MODEL or CONTROL_RE.search(spec.model):  # it becomes a commit trailer
        return "invalid model name"
    if spec.HasField("repo"):
        if not valid_url(spec.repo.url):
            return "repo url missing or invalid"
        if not COMMIT_RE.match(spec.repo.base_commit):
            return "repo base_commit must be a full hex commit id"
        ref = spec.repo.base_ref
        if ref and not valid_ref(ref, BASE_REF_RE):
            return "invalid repo base_ref"
        if not valid_ref(spec.branch, BRANCH_RE):
            return f"invalid branch {show(spec.branch)}"
    if len(spec.merges) > MAX_DEPENDENCIES or (spec.merges and not spec.HasField("repo")):
        return "too many merges, or merges without a repo"
    for merge in spec.merges:
        if merge.url != spec.repo.url or not COMMIT_RE.match(merge.base_commit):
            return "a merge must be a full hex commit id on the job's own remote"
        if not valid_ref(merge.base_ref, BASE_REF_RE):
            return "invalid merge ref"
    if len(spec.input.encode()) > MAX_INPUT or "\0" in spec.input:
        return "input too long or with a NUL byte"
    if spec.input_path and not valid_input_path(spec.input_path):
        return f"invalid input path {show(spec.input_path)}"
    if len(spec.resume_branches) > MAX_RESUME_BRANCHES:
        return "too many resume branches"
    for branch in spec.resume_branches:
        if not valid_ref(branch, BRANCH_RE):
            return f"invalid resume branch {show(branch)}"
    for key, value in spec.env.items():
        if not ENV_KEY_RE.match(key):
            return f"invalid environment variable name {show(key)}"
        if "\0" in value:
            return f"invalid value for environment variable {key} (a NUL byte)"
    if len(spec.ignore_paths) > MAX_IGNORE_PATHS or not all(map(valid_ignore_path, spec.ignore_paths)):
        return "invalid ignore paths (relative globs, at most 32)"
    for key, value in spec.secrets.items():
        if not ENV_KEY_RE.match(key):
            return f"invalid secret name {show(key)}"
        if "\0" in value or len(value) > MAX_SECRET_VALUE:
            return f"invalid value for secret {key}"
    return ""


class NodeCalls:
    """What each Node call does, over whichever link it came: plain methods that raise
    CallRefused (with its gRPC code) for a request the node will not run."""

    def __init__(
        self, runner: Runner, hub: Hub, info: Callable[[], types_pb2.NodeInfo], heartbeat_s: float
    ) -> None:
        self.runner = runner
        self.hub = hub
        self.info = info
        self.heartbeat_s = heartbeat_s
        # Method name (as in node.proto) -> (request type, the work): for calls by name.
        self.methods: dict[str, tuple[type[Message], Callable[[Any], Awaitable[Message]]]] = {
            "StartJob": (types_pb2.JobSpec, self.start_job),
            "CancelJob": (node_pb2.CancelJobRequest, self.cancel_job),
            "ListJobs": (node_pb2.ListJobsRequest, self.list_jobs),
            "AckResults": (node_pb2.AckResultsRequest, self.ack_results),
            "Cleanup": (node_pb2.NodeCleanupRequest, self.cleanup),
        }

    async def session(self, heartbeat_s: float) -> AsyncGenerator[node_pb2.NodeEvent, None]:
        """A heartbeat at once and every period, and every event of the hub between. The
        caller sends each on before asking for the next: only then is it taken (the
        hub's log backlog counts what waits)."""
        period = heartbeat_s if 0.1 <= heartbeat_s <= 60 else self.heartbeat_s
        sub = self.hub.subscribe()
        try:
            yield self.hub.event(heartbeat=self.info())
            loop = asyncio.get_running_loop()
            next_beat = loop.time() + period
            while True:
                timeout = next_beat - loop.time()
                if timeout <= 0:
                    yield self.hub.event(heartbeat=self.info())
                    next_beat = loop.time() + period
                    continue
                try:
                    event = await asyncio.wait_for(sub.queue.get(), timeout)
                except TimeoutError:
                    continue
                yield event  # returns once the link let it go
                sub.taken(event)
        finally:
            self.hub.unsubscribe(sub)

    async def call(self, method: str, request: bytes) -> bytes:
        """A call by name, its request and reply as bytes (the dial-home stream's)."""
        known = self.methods.get(method)
        if known is None:
            raise CallRefused(f"unknown method {show(method)}", "UNIMPLEMENTED")
        kind, work = known
        message = kind()
        try:
            message.ParseFromString(request)
        except DecodeError:
            raise CallRefused("malformed request") from None
        return (await work(message)).SerializeToString()

    async def start_job(self, request: types_pb2.JobSpec) -> node_pb2.StartJobReply:
        problem = validate_spec(request)
        if problem:
            raise CallRefused(problem)
        accepted, reason = self.runner.start(convert.job_from_proto(request))
        return node_pb2.StartJobReply(accepted=accepted, reason=reason)

    async def cancel_job(self, request: node_pb2.CancelJobRequest) -> node_pb2.CancelJobReply:
        if not valid_id(request.attempt_id):
            raise CallRefused(f"invalid attempt id {show(request.attempt_id)}")
        return node_pb2.CancelJobReply(found=self.runner.cancel(request.attempt_id))

    async def list_jobs(self, request: node_pb2.ListJobsRequest) -> node_pb2.ListJobsReply:
        return node_pb2.ListJobsReply(jobs=convert.node_jobs(*self.runner.jobs()))

    async def ack_results(self, request: node_pb2.AckResultsRequest) -> node_pb2.AckResultsReply:
        bad = next((a for a in request.attempt_ids if not valid_id(a)), None)
        if bad is not None:
            raise CallRefused(f"invalid attempt id {show(bad)}")
        self.runner.ack(list(request.attempt_ids))
        return node_pb2.AckResultsReply()

    async def cleanup(self, request: node_pb2.NodeCleanupRequest) -> node_pb2.NodeCleanupReply:
        if not valid_id(request.run_id):
            raise CallRefused(f"invalid run id {show(request.run_id)}")
        if request.refs and "." in request.run_id:
            raise CallRefused("refs are deleted for a whole run only")
        if len(request.run_id) >= 100:  # no job key (at most 100 characters) starts with "<it>."
            return node_pb2.NodeCleanupReply(removed=0)
        try:
            removed, refs = await asyncio.to_thread(self.runner.cleanup, request.run_id, request.refs)
        except (WorkspaceError, OSError) as exc:
            raise CallRefused(f"cannot clean up: {exc}", "FAILED_PRECONDITION") from exc
        return node_pb2.NodeCleanupReply(removed=removed, refs_removed=refs)


class NodeServicer(node_pb2_grpc.NodeServicer):
    """The Node gRPC service: the caller checked, then the call's work."""

    def __init__(self, calls: NodeCalls) -> None:
        self.calls = calls

    async def _only_coordinator(self, context: Any) -> None:
        role, _ = peer_role(context)
        if role != "coordinator":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "only the coordinator may call a node")

    async def _run(self, work: Callable[[Any], Awaitable[Any]], request: Any, context: Any) -> Any:
        await self._only_coordinator(context)
        try:
            return await work(request)
        except CallRefused as exc:
            await context.abort(grpc.StatusCode[exc.code], str(exc))

    async def Session(
        self, request: node_pb2.SessionRequest, context: Any
    ) -> AsyncIterator[node_pb2.NodeEvent]:
        await self._only_coordinator(context)
        events = self.calls.session(request.heartbeat_s)
        try:
            async for event in events:
                yield event  # returns once gRPC flow control lets it go
        finally:
            await events.aclose()

    async def StartJob(self, request: types_pb2.JobSpec, context: Any) -> node_pb2.StartJobReply:
        reply: node_pb2.StartJobReply = await self._run(self.calls.start_job, request, context)
        return reply

    async def CancelJob(self, request: node_pb2.CancelJobRequest, context: Any) -> node_pb2.CancelJobReply:
        reply: node_pb2.CancelJobReply = await self._run(self.calls.cancel_job, request, context)
        return reply

    async def ListJobs(self, request: node_pb2.ListJobsRequest, context: Any) -> node_pb2.ListJobsReply:
        reply: node_pb2.ListJobsReply = await self._run(self.calls.list_jobs, request, context)
        return reply

    async def AckResults(self, request: node_pb2.AckResultsRequest, context: Any) -> node_pb2.AckResultsReply:
        reply: node_pb2.AckResultsReply = await self._run(self.calls.ack_results, request, context)
        return reply

    async def Cleanup(self, request: node_pb2.NodeCleanupRequest, context: Any) -> node_pb2.NodeCleanupReply:
        reply: node_pb2.NodeCleanupReply = await self._run(self.calls.cleanup, request, context)
        return reply
