"""The Node gRPC service: accepts work only from the coordinator that certified it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from node_agent.hub import Hub
from node_agent.runner import Runner
from protos.contract import ENV_KEY_RE
from protos.flota.v1 import node_pb2, node_pb2_grpc, types_pb2
from protos.peer import peer_role

__all__ = ["NodeServicer", "validate_spec"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_BRANCH = re.compile(r"^flota/[A-Za-z0-9._/-]{1,200}\Z")
AGENTS = ("shell",)


def validate_spec(spec: types_pb2.JobSpec) -> str:
    """'' when the spec is acceptable, else one line saying what is wrong."""
    for name in ("job_id", "run_id", "attempt_id"):
        if not _ID.match(getattr(spec, name)) or ".." in getattr(spec, name):
            return f"invalid {name} {getattr(spec, name)!r}"
    if spec.agent not in AGENTS:
        return f"unknown agent {spec.agent!r} (this node runs: {', '.join(AGENTS)})"
    if not spec.command.strip():
        return "empty command"
    if not 0 <= spec.timeout_s <= 7 * 86400:
        return "timeout_s out of range"
    if spec.HasField("repo"):
        if not spec.repo.url or spec.repo.url.startswith("-"):
            return "repo url missing or invalid"
        if not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", spec.repo.base_commit):
            return "repo base_commit must be a full hex commit id"
        ref = spec.repo.base_ref
        if ref and (not re.fullmatch(r"refs/[A-Za-z0-9._/-]{1,200}", ref) or ".." in ref):
            return "invalid repo base_ref"
        if not _BRANCH.match(spec.branch) or ".." in spec.branch:
            return f"invalid branch {spec.branch!r}"
    for key in spec.env:
        if not ENV_KEY_RE.match(key):
            return f"invalid environment variable name {key!r}"
    for key, value in spec.secrets.items():
        if not ENV_KEY_RE.match(key):
            return f"invalid secret name {key!r}"
        if "\0" in value or len(value) > 65536:
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
        accepted, reason = self.runner.start(request)
        return node_pb2.StartJobReply(accepted=accepted, reason=reason)

    async def CancelJob(self, request: node_pb2.CancelJobRequest, context: Any) -> node_pb2.CancelJobReply:
        await self._only_coordinator(context)
        return node_pb2.CancelJobReply(found=self.runner.cancel(request.attempt_id))

    async def ListJobs(self, request: node_pb2.ListJobsRequest, context: Any) -> node_pb2.ListJobsReply:
        await self._only_coordinator(context)
        return node_pb2.ListJobsReply(jobs=self.runner.jobs())

    async def AckResults(self, request: node_pb2.AckResultsRequest, context: Any) -> node_pb2.AckResultsReply:
        await self._only_coordinator(context)
        self.runner.ack(list(request.attempt_ids))
        return node_pb2.AckResultsReply()

    async def Cleanup(self, request: node_pb2.NodeCleanupRequest, context: Any) -> node_pb2.NodeCleanupReply:
        await self._only_coordinator(context)
        if not _ID.match(request.run_id) or ".." in request.run_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid run id {request.run_id!r}")
        removed = await asyncio.to_thread(self.runner.cleanup, request.run_id)
        return node_pb2.NodeCleanupReply(removed=removed)
