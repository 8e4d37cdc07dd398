"""One link per node, the transport under dispatch.py: dials the node (expecting its
certificate), holds its event session, decodes its events, carries calls to it.

The node is dialed with the TLS name `<id>.node.flota`, so an impostor that announces
another node's id over mDNS fails the handshake: identity is the certificate.

Error handling: calls raise NodeCallError (one line, with the gRPC code's name) for any
RPC failure; what a failure means is dispatch.py's table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from coordinator.convert import event_from_pb, node_job_from_pb
from coordinator.errors import NodeCallError
from coordinator.models import NodeEvent, NodeJob
from protos.channels import client_options
from protos.contract import node_server_name
from protos.flota.v1 import node_pb2, node_pb2_grpc, types_pb2

__all__ = ["Credentials", "EventHandler", "NodeLink", "StateHandler"]

log = logging.getLogger("flota.coordinator.link")

CONNECT_TIMEOUT_S = 2.0
SOURCE_ORDER = ("register", "mdns", "static", "store")
CALL_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Credentials:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    def channel(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)


EventHandler = Callable[[str, NodeEvent], None]
StateHandler = Callable[[str, str, str], Awaitable[None]]  # node id, "up"/"down", address or error


class NodeLink:
    def __init__(
        self,
        node_id: str,
        creds: Credentials,
        on_event: EventHandler,
        on_state: StateHandler,
        heartbeat_s: float,
    ) -> None:
        self.node_id = node_id
        self._creds = creds
        self._on_event = on_event
        self._on_state = on_state
        self._heartbeat_s = heartbeat_s
        self.sources: dict[str, list[str]] = {}  # "register" | "mdns" | "static" | "store" -> addresses
        self.address = ""
        self.last_error = ""
        self._channel: grpc.aio.Channel | None = None
        self._stub: node_pb2_grpc.NodeStub | None = None
        self._hinted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def hint(self, addresses: list[str], source: str = "register") -> None:
        """Where the node says (or mDNS, or config says) it listens now. Each source's
        latest word replaces its earlier one, so a restarted node's old port is dropped.
        Wakes a dial in progress or waiting."""
        new = list(dict.fromkeys(addresses))
        if self.sources.get(source) != new:
            self.sources[source] = new
            self._hinted.set()
        elif self._stub is None:
            self._hinted.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"link-{self.node_id}")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._channel:
            await self._channel.close()

    @property
    def connected(self) -> bool:
        return self._stub is not None

    def _ordered(self) -> list[str]:
        """The last working address first, then the node's own word, then mDNS, config, memory."""
        found = [a for src in SOURCE_ORDER for a in self.sources.get(src, ())]
        ordered = ([self.address] if self.address in found else []) + found
        return list(dict.fromkeys(ordered))

    async def _dial(self, address: str) -> grpc.aio.Channel | None:
        """A ready channel, or None as soon as the address refuses, times out, or a new
        hint arrives (a refused port never becomes READY, so waiting for it is waste)."""
        channel = grpc.aio.secure_channel(
            address, self._creds.channel(), options=client_options(node_server_name(self.node_id))
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT_S
        state = channel.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            remaining = deadline - loop.time()
            if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE or remaining <= 0 or self._hinted.is_set():
                self.last_error = f"cannot connect to {address}" + (
                    " (TLS or connection refused)"
                    if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE
                    else ""
                )
                await channel.close()
                return None
            try:
                await asyncio.wait_for(channel.wait_for_state_change(state), min(remaining, 0.25))
            except TimeoutError:
                pass
            state = channel.get_state()
        return channel

    async def _loop(self) -> None:
        while True:
            try:
                await self._dial_and_hold()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or a store error must not end this node's link for good
                log.exception("link to %s failed; retrying", self.node_id)
                await asyncio.sleep(1.0)

    async def _dial_and_hold(self) -> None:
        backoff = 0.2
        while True:
            self._hinted.clear()
            for address in self._ordered():
                channel = await self._dial(address)
                if channel is not None:
                    backoff = 0.2
                    await self._session(channel, address)
                    break
                if self._hinted.is_set():
                    break  # fresher addresses arrived: start over with them
            if self._hinted.is_set():
                continue
            try:
                await asyncio.wait_for(self._hinted.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, 2.0)

    async def _session(self, channel: grpc.aio.Channel, address: str) -> None:
        stub = node_pb2_grpc.NodeStub(channel)
        call = stub.Session(node_pb2.SessionRequest(heartbeat_s=self._heartbeat_s))
        try:
            first = await call.read()
            if not isinstance(first, node_pb2.NodeEvent):
                raise NodeCallError("session closed at once")
            self._channel, self._stub, self.address = channel, stub, address
            self.last_error = ""
            # "up" first: it reconciles the node (once); the first heartbeat then brings its
            # facts, and only then is the node online.
            await self._on_state(self.node_id, "up", address)
            self._deliver(first)
            while True:
                event = await call.read()
                if not isinstance(event, node_pb2.NodeEvent):
                    self.last_error = "session ended by the node"
                    break
                self._deliver(event)
        except grpc.aio.AioRpcError as exc:
            self.last_error = f"{exc.code().name}: {exc.details()}"
        except NodeCallError as exc:
            self.last_error = str(exc)
        finally:
            call.cancel()
            was_up = self._stub is not None
            self._stub = None
            self._channel = None
            await channel.close()
            if was_up:
                await self._on_state(self.node_id, "down", self.last_error)

    def _deliver(self, event: node_pb2.NodeEvent) -> None:
        decoded = event_from_pb(event)
        if decoded is not None:  # a kind from a newer node: nothing this coordinator acts on
            self._on_event(self.node_id, decoded)

    # --- calls --------------------------------------------------------------------------

    def _require(self) -> node_pb2_grpc.NodeStub:
        if self._stub is None:
            raise NodeCallError(f"node {self.node_id} is not connected", "UNAVAILABLE")
        return self._stub

    async def _call(self, method: str, request: object, timeout: float = CALL_TIMEOUT_S) -> object:
        stub = self._require()
        try:
            return await getattr(stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise NodeCallError(
                f"{method} failed: {exc.details() or exc.code().name}", exc.code().name
            ) from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled ourselves
            # grpc.aio cancels calls in flight when their channel closes (the session ended).
            raise NodeCallError(f"{method} failed: the connection closed", "UNAVAILABLE") from exc

    async def start_job(self, spec: types_pb2.JobSpec) -> node_pb2.StartJobReply:
        reply = await self._call("StartJob", spec)
        assert isinstance(reply, node_pb2.StartJobReply)
        return reply

    async def cancel_job(self, attempt_id: str, reason: str) -> bool:
        reply = await self._call("CancelJob", node_pb2.CancelJobRequest(attempt_id=attempt_id, reason=reason))
        assert isinstance(reply, node_pb2.CancelJobReply)
        return reply.found

    async def list_jobs(self) -> list[NodeJob]:
        reply = await self._call("ListJobs", node_pb2.ListJobsRequest())
        assert isinstance(reply, node_pb2.ListJobsReply)
        return [node_job_from_pb(job) for job in reply.jobs]

    async def ack(self, attempt_ids: list[str]) -> None:
        await self._call("AckResults", node_pb2.AckResultsRequest(attempt_ids=attempt_ids))

    async def cleanup(self, run_id: str, refs: bool = False) -> tuple[int, int]:
        """(worktrees, refs) removed; `run_id` may be a job's id (without refs)."""
        request = node_pb2.NodeCleanupRequest(run_id=run_id, refs=refs)
        reply = await self._call("Cleanup", request, timeout=60)
        assert isinstance(reply, node_pb2.NodeCleanupReply)
        return reply.removed, reply.refs_removed
