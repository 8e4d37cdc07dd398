"""The Node gRPC service: accepts work only from the coordinator that certified it.

Error handling: a request holding a value the node will not use (an id that could leave
the workspace, a ref git would refuse, a URL naming a remote helper, a NUL byte bound for
argv or the environment) is refused with INVALID_ARGUMENT and one line, before anything
runs; never a traceback. Error lines quote at most 200 characters of a value: gRPC
clients refuse status trailers over 8 KiB.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from node_agent.hub import Hub
from node_agent.runner import Runner
from node_agent.workspace import WorkspaceError
from protos.flota.v1 import node_pb2, node_pb2_grpc, types_pb2
from protos.limits import ENV_KEY_RE, NAME_RE
from protos.peer import peer_role

__all__ = ["NodeServicer", "validate_spec"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_BRANCH = re.compile(r"^flota/[A-Za-z0-9._/-]{1,200}\Z")
_BASE_REF = re.compile(r"^refs/[A-Za-z0-9._/-]{1,200}\Z")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# git URLs the workspace may fetch from; "<helper>::<address>" and unknown "<x>://"
# schemes would run a remote helper (git-remote-<x>), ext:: a shell command.
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_SCHEMES = frozenset({"file", "git", "http", "https", "ssh", "git+ssh", "ssh+git"})
MAX_COMMAND = 64 * 1024  # as the coordinator allows
MAX_MODEL = 200
MAX_URL = 4096
MAX_RESUME_BRANCHES = 100  # the coordinator sends one per earlier attempt (at most 10)


def _show(value: str) -> str:
    """A value for an error line: quoted, and short enough for a status message."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _valid_id(value: str) -> bool:
    return bool(_ID.match(value)) and ".." not in value


def _valid_ref(name: str, shape: re.Pattern[str]) -> bool:
    """The shape, and what git check-ref-format refuses besides (so a spec the node
    accepts does not fail later in the workspace)."""
    return (
        bool(shape.match(name))
        and ".." not in name
        and not name.endswith(".")
        and all(part and not part.startswith(".") and not part.endswith(".lock") for part in name.split("/"))
    )


def _valid_url(url: str) -> bool:
    if not url or len(url) > MAX_URL or url.startswith("-") or _CONTROL.search(url):
        return False
    scheme = _URL_SCHEME.match(url)
    if scheme:
        return scheme.group(1).lower() in _URL_SCHEMES
    head = url.split("/", 1)[0]
    if "::" in head:  # <transport>::<address>: a remote helper
        return False
    if ":" in head:  # scp-like [user@]host:path
        return not head.startswith(":")
    return url.startswith("/")  # a local path: relative ones would mean the mirror's directory


def validate_spec(spec: types_pb2.JobSpec) -> str:
    """'' when the spec is acceptable, else one line saying what is wrong."""
    for name in ("job_id", "run_id", "attempt_id"):
        if not _valid_id(getattr(spec, name)):
            return f"invalid {name} {_show(getattr(spec, name))}"
    if not NAME_RE.match(spec.agent):  # shell, llm, or an agent CLI template's name
        return f"unknown agent {_show(spec.agent)} (shell, llm, or an agent CLI's name)"
    if spec.agent == "llm":
        if not spec.prompt.strip() or not spec.model:
            return "an llm job needs a prompt and a model"
        if len(spec.prompt) > MAX_COMMAND:
            return "prompt too long"
    elif not spec.command.strip():
        return "empty command"
    if spec.api_base and (
        not spec.api_base.startswith(("http://", "https://")) or _CONTROL.search(spec.api_base)
    ):
        return "invalid api_base"
    if len(spec.check) > MAX_COMMAND or "\0" in spec.check:
        return "check command too long or with a NUL byte"
    if not 0 <= spec.max_steps <= 10_000 or not 0 <= spec.budget_usd <= 100_000:
        return "max_steps or budget_usd out of range"
    if len(spec.command) > MAX_COMMAND or "\0" in spec.command:
        return "command too long or with a NUL byte"
    if not 0 <= spec.timeout_s <= 7 * 86400:
        return "timeout_s out of range"
    if "\0" in spec.prompt or "\0" in spec.name:
        return "prompt or name with a NUL byte"
    if len(spec.model) > MAX_MODEL or _CONTROL.search(spec.model):  # it becomes a commit trailer
        return "invalid model name"
    if spec.HasField("repo"):
        if not _valid_url(spec.repo.url):
            return "repo url missing or invalid"
        if not _COMMIT.match(spec.repo.base_commit):
            return "repo base_commit must be a full hex commit id"
        ref = spec.repo.base_ref
        if ref and not _valid_ref(ref, _BASE_REF):
            return "invalid repo base_ref"
        if not _valid_ref(spec.branch, _BRANCH):
            return f"invalid branch {_show(spec.branch)}"
    if len(spec.resume_branches) > MAX_RESUME_BRANCHES:
        return "too many resume branches"
    for branch in spec.resume_branches:
        if not _valid_ref(branch, _BRANCH):
            return f"invalid resume branch {_show(branch)}"
    for key, value in spec.env.items():
        if not ENV_KEY_RE.match(key):
            return f"invalid environment variable name {_show(key)}"
        if "\0" in value:
            return f"invalid value for environment variable {key} (a NUL byte)"
    for key, value in spec.secrets.items():
        if not ENV_KEY_RE.match(key):
            return f"invalid secret name {_show(key)}"
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
        if not _valid_id(request.attempt_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"invalid attempt id {_show(request.attempt_id)}"
            )
        return node_pb2.CancelJobReply(found=self.runner.cancel(request.attempt_id))

    async def ListJobs(self, request: node_pb2.ListJobsRequest, context: Any) -> node_pb2.ListJobsReply:
        await self._only_coordinator(context)
        return node_pb2.ListJobsReply(jobs=self.runner.jobs())

    async def AckResults(self, request: node_pb2.AckResultsRequest, context: Any) -> node_pb2.AckResultsReply:
        await self._only_coordinator(context)
        bad = next((a for a in request.attempt_ids if not _valid_id(a)), None)
        if bad is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid attempt id {_show(bad)}")
        self.runner.ack(list(request.attempt_ids))
        return node_pb2.AckResultsReply()

    async def Cleanup(self, request: node_pb2.NodeCleanupRequest, context: Any) -> node_pb2.NodeCleanupReply:
        await self._only_coordinator(context)
        if not _valid_id(request.run_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid run id {_show(request.run_id)}")
        if len(request.run_id) >= 100:  # no job key (at most 100 characters) starts with "<it>."
            return node_pb2.NodeCleanupReply(removed=0)
        try:
            removed = await asyncio.to_thread(self.runner.cleanup, request.run_id)
        except (WorkspaceError, OSError) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot clean up: {exc}")
        return node_pb2.NodeCleanupReply(removed=removed)
