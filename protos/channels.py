"""gRPC options both daemons use: keepalive that detects a cut link in seconds, and
server limits that keep one noisy peer from starving the rest."""

from __future__ import annotations

from protos.contract import MAX_MESSAGE_BYTES

__all__ = ["CLIENT_OPTIONS", "SERVER_OPTIONS", "client_options"]

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
]


def client_options(server_name: str) -> list[tuple[str, int | str]]:
    """Client options that also fix the TLS name the peer's certificate must carry."""
    return [*CLIENT_OPTIONS, ("grpc.ssl_target_name_override", server_name)]
