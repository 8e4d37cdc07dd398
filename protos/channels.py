"""gRPC options both daemons use: keepalive that detects a cut link in seconds, and
server limits that keep one noisy peer from starving the rest.

`CallGate` is the part options cannot do. gRPC counts a call against
`maximum_concurrent_rpcs` from its headers on, and a unary handler runs (and checks
the caller's role) only once the request message has arrived; so any peer with a
certificate of the CA, e.g. a stolen node key, could open calls that never send their
request and hold every slot of a node or of the coordinator (measured: the
coordinator's own calls then fail RESOURCE_EXHAUSTED). The gate looks at the caller
before the request is read, refuses roles the server does not serve at once, caps
the calls one identity may have in flight, and gives up on a request that does not
arrive within `first_message_s`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from protos.limits import MAX_MESSAGE_BYTES
from protos.peer import peer_role

__all__ = [
    "CLIENT_OPTIONS",
    "FIRST_MESSAGE_S",
    "MAX_CONNECTIONS",
    "SERVER_OPTIONS",
    "CallGate",
    "client_options",
]


def _connection_cap() -> int:
    """A third of this process's file descriptors per server (the coordinator runs two),
    so that its own files, pipes and outgoing connections always find one."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 100_000
    return max(16, soft // 3)


MAX_CONNECTIONS = _connection_cap()

# A ping every 2 s that must be answered within 1 s: a call on a cut link fails
# UNAVAILABLE in about 1.3 s instead of hanging for minutes (DESIGN.md, measured).
CLIENT_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # The node learns its coordinator session is dead within ~3 s too (its
    # stop-after-disconnect clock starts then), not after the TCP timeout.
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Accept the clients' 2 s pings; faster ones are a misbehaving peer.
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 3),
    ("grpc.max_connection_idle_ms", 10 * 60 * 1000),
    ("grpc.so_reuseport", 0),
    # A connection that has not finished its TLS handshake within 10 s is dropped
    # (gRPC's default is 120 s): a peer that connects and says nothing holds a socket
    # and a file descriptor for that long, so a flood of them could run the daemon out.
    ("grpc.server_handshake_timeout_ms", 10_000),
    # Our clients keep a handful of calls open on one connection; more is a peer
    # trying to make the server track streams for it.
    ("grpc.max_concurrent_streams", 100),
    # Connections past this are closed as they come: a flood of them must not take every
    # file descriptor the daemon has (measured: a node then died on EMFILE reading /proc).
    ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS),
]

FIRST_MESSAGE_S = 20.0  # a request message is one small write right after the headers


def client_options(server_name: str) -> list[tuple[str, int | str]]:
    """Client options that also fix the TLS name the peer's certificate must carry."""
    return [*CLIENT_OPTIONS, ("grpc.ssl_target_name_override", server_name)]


def _peer_host(peer: str) -> str:
    """'ipv4:10.0.0.2:5555' -> 'ipv4:10.0.0.2'; the port changes with every connection."""
    return peer.rpartition(":")[0] or peer


class CallGate(grpc.aio.ServerInterceptor):
    """Admit a call by the caller's certificate before its request is read.

    `allow` maps each role this server serves (see protos.peer: "coordinator", "node",
    "admin", or "" for a caller without a client certificate, counted by address) to
    how many calls one such caller may have in flight, None for no cap. Other roles
    are refused PERMISSION_DENIED with `refusal`; a caller over its cap gets
    RESOURCE_EXHAUSTED; a call whose request has not arrived after `first_message_s`
    ends DEADLINE_EXCEEDED, and one whose request does not decode, INVALID_ARGUMENT.
    The servicers still check roles per method: this only keeps the slots free. Put it
    first among a server's interceptors: those after it still see the service's unary
    handlers, which it then wraps.
    """

    def __init__(
        self,
        allow: Mapping[str, int | None],
        first_message_s: float = FIRST_MESSAGE_S,
        refusal: str = "this server takes no calls from this certificate",
    ) -> None:
        self._allow = dict(allow)
        self._first_message_s = first_message_s
        self._refusal = refusal
        self._in_flight: Counter[tuple[str, str]] = Counter()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.request_streaming:
            if not handler.response_streaming:
                return handler  # none of our services has a client-streaming call
            # A bidirectional stream (DialHome): its handler starts at the headers already,
            # and the caller's messages come when they come; admitted and counted the same.
            return grpc.stream_stream_rpc_method_handler(
                self._both_ways(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # The same call as a request-streaming one: its behavior starts at the headers.
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_unary_rpc_method_handler(
            self._unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, behavior: Any) -> Callable[[Any, Any], Awaitable[Any]]:
        async def unary(requests: Any, context: Any) -> Any:
            key = await self._admit(context)
            try:
                request = await self._first(context)
                return await behavior(request, context)
            finally:
                self._release(key)

        return unary

    def _streaming(self, behavior: Any) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def streaming(requests: Any, context: Any) -> AsyncIterator[Any]:
            key = await self._admit(context)
            try:
                request = await self._first(context)
                responses = behavior(request, context)
                if not inspect.isasyncgen(responses):  # a handler that writes through context
                    await responses
                    return
                try:
                    async for response in responses:
                        yield response
                finally:
                    await responses.aclose()
            finally:
                self._release(key)

        return streaming

    def _both_ways(self, behavior: Any) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def both_ways(requests: Any, context: Any) -> AsyncIterator[Any]:
            key = await self._admit(context)
            try:
                responses = behavior(requests, context)
                try:
                    async for response in responses:
                        yield response
                finally:
                    await responses.aclose()
            finally:
                self._release(key)

        return both_ways

    async def _admit(self, context: Any) -> tuple[str, str]:
        role, name = peer_role(context)
        if role not in self._allow:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, self._refusal)
        key = (role, name or _peer_host(context.peer()))
        cap = self._allow[role]
        if cap is not None and self._in_flight[key] >= cap:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many calls in flight from this peer (limit {cap})"
            )
        self._in_flight[key] += 1
        return key

    def _release(self, key: tuple[str, str]) -> None:
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]

    async def _first(self, context: Any) -> Any:
        try:
            request = await asyncio.wait_for(context.read(), self._first_message_s)
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no request within {self._first_message_s:g} s"
            )
        except DecodeError:  # the bytes are the problem, not the server: no traceback for it
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
        if request is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request")
        return request
