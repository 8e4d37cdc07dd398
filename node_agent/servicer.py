"""The Node gRPC service: accepts work only from the coordinator that certified it.

Error handling: a request holding a value the node will not use (an id that could leave
the workspace, a ref git would refuse, a URL naming a remote helper, a NUL byte bound for
argv or the environment) is refused with INVALID_ARGUMENT and one line, before anything
runs; never a traceback. Error lines quote at most 200 characters of a value: gRPC
clients refuse status trailers over 8 KiB. The rules are those of :mod:`protos.limits`,
which the coordinator's API applies too.

The servicer is an edge: it validates the wire message, then hands the runner a model
(:mod:`node_agent.convert`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from node_agent import convert
from node_agent.errors import WorkspaceError
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
    MAX_MODEL,
    MAX_RESUME_BRANCHES,
    MAX_SECRET_VALUE,
    MAX_STEPS,
    MAX_TIMEOUT_S,
    NAME_RE,
    show,
    valid_api_base,
    valid_id,
    valid_ref,
    valid_url,
)
from protos.peer import peer_role

__all__ = ["NodeServicer", "validate_spec"]


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
    for key, value in spec.secrets.items():
        if not ENV_KEY_RE.match(key):
            return f"invalid secret name {show(key)}"
        if "\0" in value or len(value) > MAX_SECRET_VALUE:
            return f"invalid value for secret {key}"
    return ""


class NodeServicer(node_pb2_grpc.NodeServicer):
    def __init__(
        self, runner: Runner, hub: Hub, info: Callable[[], types_pb2.NodeInfo], heartbeat_s: float
    ) -> None:
        self.runner = runner
        self.hub = hub
        self.info = info
        self.heartbeat_s = heartbeat_s

    async def _only_coordinator(self, context: Any) -> None:
        role, _ = peer_role(context)
        if role != "coordinator":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "only the coordinator may call a node")

    async def Session(
        self, request: node_pb2.SessionRequest, context: Any
    ) -> AsyncIterator[node_pb2.NodeEvent]:
        await self._only_coordinator(context)
        period = request.heartbeat_s if 0.1 <= request.heartbeat_s <= 60 else self.heartbeat_s
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
                yield event  # returns once gRPC flow control lets it go
                sub.taken(event)
        finally:
            self.hub.unsubscribe(sub)

    async def StartJob(self, request: types_pb2.JobSpec, context: Any) -> node_pb2.StartJobReply:
        await self._only_coordinator(context)
        problem = validate_spec(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        accepted, reason = self.runner.start(convert.job_from_proto(request))
        return node_pb2.StartJobReply(accepted=accepted, reason=reason)

    async def CancelJob(self, request: node_pb2.CancelJobRequest, context: Any) -> node_pb2.CancelJobReply:
        await self._only_coordinator(context)
        if not valid_id(request.attempt_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"invalid attempt id {show(request.attempt_id)}"
            )
        return node_pb2.CancelJobReply(found=self.runner.cancel(request.attempt_id))

    async def ListJobs(self, request: node_pb2.ListJobsRequest, context: Any) -> node_pb2.ListJobsReply:
        await self._only_coordinator(context)
        return node_pb2.ListJobsReply(jobs=convert.node_jobs(*self.runner.jobs()))

    async def AckResults(self, request: node_pb2.AckResultsRequest, context: Any) -> node_pb2.AckResultsReply:
        await self._only_coordinator(context)
        bad = next((a for a in request.attempt_ids if not valid_id(a)), None)
        if bad is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid attempt id {show(bad)}")
        self.runner.ack(list(request.attempt_ids))
        return node_pb2.AckResultsReply()

    async def Cleanup(self, request: node_pb2.NodeCleanupRequest, context: Any) -> node_pb2.NodeCleanupReply:
        await self._only_coordinator(context)
        if not valid_id(request.run_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid run id {show(request.run_id)}")
        if request.refs and "." in request.run_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refs are deleted for a whole run only")
        if len(request.run_id) >= 100:  # no job key (at most 100 characters) starts with "<it>."
            return node_pb2.NodeCleanupReply(removed=0)
        try:
            removed, refs = await asyncio.to_thread(self.runner.cleanup, request.run_id, request.refs)
        except (WorkspaceError, OSError) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot clean up: {exc}")
        return node_pb2.NodeCleanupReply(removed=removed, refs_removed=refs)
