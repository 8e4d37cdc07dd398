"""`flota node join`: trade a one-time token and a fresh key's CSR for a certificate.

The token pins the hash of the coordinator's CA. The enrollment port serves the CA
certificate itself, so the node reads it without trusting anything, checks the pin,
and only then opens a TLS channel that trusts that CA and nothing else.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node_agent.errors import EnrollError
from node_agent.identity import node_id, write_private
from protos.contract import CA_SERVER_NAME, JoinToken, TokenError, fingerprint, node_cn, parse_hostport
from protos.flota.v1 import coordinator_pb2, coordinator_pb2_grpc

__all__ = ["join", "split_address"]


def split_address(address: str, default_port: int) -> tuple[str, int]:
    try:
        host, port = parse_hostport(address, default_port, default_host="")
    except ValueError as exc:
        raise EnrollError(str(exc)) from exc
    if not host or port == 0:
        raise EnrollError(f"invalid address {address!r} (expected HOST:PORT)")
    return host, port


def _fetch_ca(host: str, port: int, timeout: float) -> bytes:
    try:
        pem = ssl.get_server_certificate((host, port), timeout=timeout)
    except (OSError, ssl.SSLError) as exc:
        raise EnrollError(
            f"cannot reach the coordinator's enrollment port {host}:{port}: {exc}", unreachable=True
        ) from exc
    return pem.encode()


def join(state_dir: Path, address: str, token_text: str, name: str, timeout: float = 10.0) -> str:
    """Enroll this node; returns its id. Writes the identity under `state_dir`."""
    try:
        token = JoinToken.parse(token_text)
    except TokenError as exc:
        raise EnrollError(str(exc)) from exc
    host, port = split_address(address, 7371)
    ca_pem = _fetch_ca(host, port, timeout)
    ca_der = ssl.PEM_cert_to_DER_cert(ca_pem.decode())
    if fingerprint(ca_der) != token.ca_fingerprint:
        raise EnrollError(
            f"the CA at {host}:{port} does not match the token's CA hash: "
            "not the coordinator that made this token (refusing to join)"
        )
    ident = node_id(state_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_cn(ident))]))
        .sign(key, hashes.SHA256())
    )
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(
        f"{host}:{port}", creds, options=[("grpc.ssl_target_name_override", CA_SERVER_NAME)]
    ) as channel:
        stub = coordinator_pb2_grpc.EnrollmentStub(channel)
        try:
            reply = stub.Join(
                coordinator_pb2.JoinRequest(
                    token=str(token), csr_pem=csr.public_bytes(serialization.Encoding.PEM), name=name
                ),
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            down = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            raise EnrollError(f"join refused: {exc.details()}", unreachable=down) from exc
    if reply.node_id != ident:
        raise EnrollError("the coordinator issued a certificate for another node id")
    _, _, api_port = reply.coordinator_address.rpartition(":")
    d = state_dir / "identity"
    write_private(
        d / "node.key",
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    write_private(d / "node.pem", reply.certificate_pem)
    write_private(d / "ca.pem", ca_pem)
    # The coordinator is reached at the host this node just used; only the port is its word.
    write_private(d / "coordinator", f"{_format_host(host)}:{api_port}".encode())
    return ident


def _format_host(host: str) -> str:
    try:
        socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return host
    return f"[{host}]"
