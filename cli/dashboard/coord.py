"""The dashboard's channel to the coordinator: the CLI's (admin certificate, the same
address rules, the same one-line errors), as grpc.aio so that one event loop serves
every browser and every stream.

The actions are the RPCs the CLI's commands make (`flota cancel`, `retry`, `cleanup`,
`node drain`); a failed call raises `CliError` with the line the CLI would print.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import grpc
import grpc.aio

from cli.client import CALL_TIMEOUT_S, CliError, admin_credentials, translate, unbatch
from protos.channels import client_options
from protos.contract import COORDINATOR_SERVER_NAME
from protos.flota.v1 import coordinator_pb2 as pb
from protos.flota.v1 import coordinator_pb2_grpc

__all__ = ["Coordinator"]

_Request = TypeVar("_Request")
_Reply = TypeVar("_Reply")


class Coordinator:
    """Made inside the running event loop; `close` when done."""

    def __init__(self, address: str | None) -> None:
        self._given = address
        self.address, creds = admin_credentials(address)
        self._open(creds)

    def _open(self, creds: grpc.ChannelCredentials) -> None:
        self._channel = grpc.aio.secure_channel(
            self.address, creds, options=client_options(COORDINATOR_SERVER_NAME)
        )
        self._stub: coordinator_pb2_grpc.CoordinatorAsyncStub = coordinator_pb2_grpc.CoordinatorStub(
            self._channel
        )

    async def refresh(self) -> None:
        """Before a reconnect: a local coordinator may have come back on another port (the
        address it wrote is read again, as `flota events` does; a given one is kept)."""
        try:
            address, creds = admin_credentials(self._given)
        except CliError:
            return  # its files are being rewritten: try again at the next reconnect
        if address != self.address:
            old, self.address = self._channel, address
            self._open(creds)
            await old.close()

    async def close(self) -> None:
        await self._channel.close()

    # --- reads ----------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> pb.Run:
        return await self._unary(self._stub.GetRun, pb.GetRunRequest(run_id=run_id))

    async def get_job(self, job_id: str) -> pb.Job:
        return await self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))

    async def stream_events(self, since: int) -> AsyncIterator[pb.Event]:
        """The fleet's events after `since`, one by one (the coordinator's batches opened)."""
        request = pb.StreamEventsRequest(since=since, batch=True)
        async for message in self._stream(self._stub.StreamEvents, request):
            for event in unbatch(message):
                yield event

    def stream_logs(self, job_id: str) -> AsyncIterator[pb.LogChunk]:
        """Every attempt's output, then the lines as they come, until the job ends."""
        return self._stream(self._stub.StreamLogs, pb.StreamLogsRequest(job_id=job_id, follow=True))

    # --- actions, as the CLI's commands make them -------------------------------------------

    async def cancel(self, ident: str) -> pb.CancelReply:
        return await self._unary(self._stub.Cancel, pb.CancelRequest(id=ident))

    async def retry(self, ident: str, failed_only: bool) -> pb.RetryReply:
        return await self._unary(self._stub.Retry, pb.RetryRequest(id=ident, failed=failed_only))

    def cleanup(self, run_id: str) -> AsyncIterator[pb.CleanupEvent]:
        """Each step as the coordinator reports it (`progress`), the last one its reply (`done`)."""
        return self._stream(self._stub.Cleanup, pb.CleanupRequest(run_id=run_id))

    async def drain_node(self, node: str, undo: bool) -> pb.NodeStatus:
        return await self._unary(self._stub.DrainNode, pb.DrainNodeRequest(node=node, undo=undo))

    # --- transport ------------------------------------------------------------------------

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Reply],
        request: _Request,
        timeout: float = CALL_TIMEOUT_S,
    ) -> _Reply:
        try:
            return await method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise translate(exc, self.address) from None

    async def _stream(
        self, method: grpc.aio.UnaryStreamMultiCallable[_Request, _Reply], request: _Request
    ) -> AsyncIterator[_Reply]:
        call = method(request)
        try:
            async for reply in call:
                yield reply
        except grpc.RpcError as exc:
            raise translate(exc, self.address) from None
        finally:
            call.cancel()
