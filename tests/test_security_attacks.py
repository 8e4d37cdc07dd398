"""Attacks against real daemons, each checked to fail with a specific error while the
daemon goes on serving everyone else.

1. Certificates: no client certificate, one from a foreign CA, one from the fleet's own
   CA that has expired, and a node's certificate calling another node as if it were
   the coordinator.
2. A rogue host announcing an enrolled node over mDNS: tests/lab/test_rogue.py.
3. Join tokens at the real enrollment port: reused, expired, guessed, presented to a
   coordinator whose CA is not the one the token pins; the store keeps only hashes.
4. Exhaustion: oversized messages, floods of connections and of calls, calls that
   never send their request, and readers that never read.
5. Local files: the daemons refuse keys other users can read, and create their state
   owner-only.

One coordinator and two nodes serve the whole module (about 40 s on 2 cores); the
slowest test waits out the 10 s handshake timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import secrets
import socket
import sqlite3
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protos.channels import MAX_CONNECTIONS, client_options
from protos.contract import CA_SERVER_NAME, COORDINATOR_SERVER_NAME, JoinToken, node_server_name
from protos.flota.v1 import coordinator_pb2, coordinator_pb2_grpc, node_pb2, node_pb2_grpc, types_pb2
from protos.limits import MAX_MESSAGE_BYTES
from tests.fleet import Fleet, wait_until

pytestmark = pytest.mark.timeout(120)

NODE_METHODS = ("Session", "StartJob", "CancelJob", "ListJobs", "AckResults", "Cleanup")
# What the daemons' TLS layer (gRPC core) logs when it refuses a client certificate.
NO_CERTIFICATE = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
UNKNOWN_ISSUER = "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"
EXPIRED = "CERTIFICATE_VERIFY_FAILED: certificate has expired"
HANDSHAKE_TIMEOUT_S = 10  # protos/channels.py: grpc.server_handshake_timeout_ms
PWNED = Path(tempfile.gettempdir()) / f"flota-pwned-{os.getpid()}"  # what a forged StartJob would make


# --------------------------------------------------------------------------- the fleet


@dataclass
class Target:
    """A coordinator and two nodes, alpha and beta, shared by the attacks of this module:
    each attack must leave them serving."""

    fleet: Fleet
    api: str
    join: str
    ids: dict[str, str]
    addresses: dict[str, str]

    @property
    def home(self) -> Path:
        return self.fleet.home

    def pid(self, key: str) -> int:
        return self.fleet.procs[key].pid

    def identity(self, name: str) -> Path:
        return self.home / "nodes" / name / "identity"

    def creds(self, who: str) -> grpc.ChannelCredentials:
        """The real credentials of "admin", "coordinator", or a node by name."""
        key, cert = _key_and_cert(self, who)
        return grpc.ssl_channel_credentials(self.ca_pem, key.read_bytes(), cert.read_bytes())

    @property
    def ca_pem(self) -> bytes:
        return (self.home / "admin" / "ca.pem").read_bytes()

    def api_stub(self, creds: grpc.ChannelCredentials, *options: Any) -> tuple[grpc.Channel, Any]:
        channel = grpc.secure_channel(self.api, creds, [*client_options(COORDINATOR_SERVER_NAME), *options])
        return channel, coordinator_pb2_grpc.CoordinatorStub(channel)

    def node_stub(self, name: str, creds: grpc.ChannelCredentials, *options: Any) -> tuple[grpc.Channel, Any]:
        channel = grpc.secure_channel(
            self.addresses[name], creds, [*client_options(node_server_name(self.ids[name])), *options]
        )
        return channel, node_pb2_grpc.NodeStub(channel)

    def job_runs_on(self, name: str) -> None:
        """The legitimate path still works end to end: the CLI submits, the coordinator
        dispatches to `name`, the job succeeds."""
        result = self.fleet.flota("--json", "run", "--on", name, "--follow", "echo still-serving")
        assert result.returncode == 0, (result.stdout, result.stderr)
        run = json.loads(result.stdout)
        assert run["jobs"][0]["node_name"] == name

    def admin_call_works(self) -> None:
        nodes = self.fleet.nodes()
        assert {nodes[n]["state"] for n in ("alpha", "beta")} == {"online"}, nodes


def _key_and_cert(target: Target, who: str) -> tuple[Path, Path]:
    if who == "admin":
        d = target.home / "admin"
        return d / "key.pem", d / "cert.pem"
    if who == "coordinator":
        d = target.home / "coordinator" / "server"
        return d / "key.pem", d / "cert.pem"
    d = target.identity(who)
    return d / "node.key", d / "node.pem"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    fleet = Fleet(tmp_path_factory.mktemp("attacks") / "home")
    try:
        coord = fleet.start_coordinator()
        fleet.start_node("alpha")
        fleet.start_node("beta")
        nodes = fleet.nodes()
        yield Target(
            fleet,
            api=coord["local"],
            join=coord["join"],
            ids={n: nodes[n]["info"]["id"] for n in ("alpha", "beta")},
            addresses={n: nodes[n]["address"] for n in ("alpha", "beta")},
        )
    finally:
        fleet.close()


# --------------------------------------------------------------------------- helpers


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    return err.code(), err.details() or ""


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _forge(real_cert: Path, *, ca_dir: Path | None, expired: bool) -> tuple[bytes, bytes]:
    """A fresh key and a certificate with exactly the real one's subject (CN) and
    extensions (SAN, usages), signed by the fleet CA's own key from the coordinator's
    state (`ca_dir`), or by a throwaway foreign CA when `ca_dir` is None; valid now, or
    expired since yesterday."""
    real = x509.load_pem_x509_certificate(real_cert.read_bytes())
    if ca_dir is not None:
        signer = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
        issuer = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes()).subject
    else:
        signer = ec.generate_private_key(ec.SECP256R1())
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flota CA evil")])
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30) if expired else now - dt.timedelta(minutes=5))
        .not_valid_after(now - dt.timedelta(days=1) if expired else now + dt.timedelta(days=1))
    )
    for ext in real.extensions:
        if ca_dir is None and isinstance(ext.value, x509.AuthorityKeyIdentifier):
            continue  # it names the fleet CA's key
        builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(signer, hashes.SHA256())
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


def _rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def _threads(pid: int) -> int:
    return int(psutil.Process(pid).num_threads())


class HeldCalls:
    """`count` calls to `method` that send their headers and then nothing: never the
    request, so a unary handler would wait for it. Runs its own event loop in a thread,
    so the test can meanwhile act as a legitimate client."""

    def __init__(
        self,
        address: str,
        creds: grpc.ChannelCredentials,
        server_name: str,
        method: str,
        count: int,
        connections: int = 1,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._channels: list[grpc.aio.Channel] = []
        self._calls: list[Any] = []

        async def open_calls() -> None:
            for i in range(connections):
                options = [
                    ("grpc.ssl_target_name_override", server_name),
                    ("grpc.use_local_subchannel_pool", 1),  # one connection per channel
                    ("flota.test.connection", i),
                ]
                self._channels.append(grpc.aio.secure_channel(address, creds, options=options))
            for i in range(count):
                self._calls.append(self._channels[i % connections].stream_unary(method)())

        self._run(open_calls())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def outcome(self) -> tuple[Counter[tuple[str, str]], int]:
        """How the calls that ended ended (code name, details), and how many still wait."""

        async def read() -> tuple[Counter[tuple[str, str]], int]:
            ended: Counter[tuple[str, str]] = Counter()
            for call in self._calls:
                if call.done():
                    ended[((await call.code()).name, await call.details())] += 1
            return ended, sum(not c.done() for c in self._calls)

        result: tuple[Counter[tuple[str, str]], int] = self._run(read())
        return result

    def settle(self, check: Callable[[Counter[tuple[str, str]], int], bool]) -> tuple[Counter[Any], int]:
        return wait_until(
            lambda: (lambda o: o if check(*o) else None)(self.outcome()), 15, what="held calls to settle"
        )

    def close(self) -> None:
        async def close_all() -> None:
            for call in self._calls:
                call.cancel()
            for channel in self._channels:
                await channel.close()

        try:
            self._run(close_all())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> HeldCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _node_request(method: str) -> Any:
    return {
        "Session": node_pb2.SessionRequest(heartbeat_s=1),
        "StartJob": types_pb2.JobSpec(
            job_id="r1.1", run_id="r1", attempt_id="r1.1.a1", agent="shell", command=f"touch {PWNED}"
        ),
        "CancelJob": node_pb2.CancelJobRequest(attempt_id="r1.1.a1"),
        "ListJobs": node_pb2.ListJobsRequest(),
        "AckResults": node_pb2.AckResultsRequest(attempt_ids=["r1.1.a1"]),
        "Cleanup": node_pb2.NodeCleanupRequest(run_id="r1"),
    }[method]


def _call_node(stub: Any, method: str) -> Any:
    if method == "Session":
        return next(iter(stub.Session(_node_request(method), timeout=5)))
    return getattr(stub, method)(_node_request(method), timeout=5)


# --------------------------------------------------------------------------- 1. certificates


HANDSHAKES = [
    ("coordinator", "no-certificate", NO_CERTIFICATE),
    ("coordinator", "foreign-ca-admin", UNKNOWN_ISSUER),
    ("coordinator", "expired-admin", EXPIRED),
    ("coordinator", "expired-node", EXPIRED),
    ("alpha", "no-certificate", NO_CERTIFICATE),
    ("alpha", "foreign-ca-coordinator", UNKNOWN_ISSUER),
    ("alpha", "expired-coordinator", EXPIRED),
]


@pytest.mark.parametrize(("server", "case", "reason"), HANDSHAKES, ids=[f"{s}-{c}" for s, c, _ in HANDSHAKES])
def test_no_handshake_without_a_valid_certificate_of_the_fleet(
    target: Target, server: str, case: str, reason: str
) -> None:
    ca_dir = target.home / "coordinator" / "ca"
    if case == "no-certificate":
        creds = grpc.ssl_channel_credentials(target.ca_pem)
    else:
        kind, _, who = case.rpartition("-")
        real = _key_and_cert(target, "beta" if who == "node" else who)[1]
        key, cert = _forge(real, ca_dir=None if kind == "foreign-ca" else ca_dir, expired=kind == "expired")
        creds = grpc.ssl_channel_credentials(target.ca_pem, key, cert)
    seen = target.fleet.log(server).count(reason)
    if server == "coordinator":
        channel, stub = target.api_stub(creds)
        register = coordinator_pb2.RegisterNodeRequest(
            info=types_pb2.NodeInfo(id=target.ids["beta"], addresses=["127.0.0.1:1"])
        )
        attempts: list[Callable[[], object]] = [
            lambda: stub.ListNodes(coordinator_pb2.ListNodesRequest(), timeout=5),
            lambda: stub.RegisterNode(register, timeout=5),
        ]
    else:
        channel, stub = target.node_stub(server, creds)
        attempts = [lambda: _call_node(stub, "StartJob"), lambda: _call_node(stub, "Session")]
    with channel:
        for attempt in attempts:
            code, details = _code(attempt)
            assert code == grpc.StatusCode.UNAVAILABLE, details
    # The daemon refused the handshake itself, and says why.
    wait_until(lambda: target.fleet.log(server).count(reason) > seen, 5, what=f"{server} to log {reason!r}")
    assert target.fleet.nodes()["beta"]["address"] == target.addresses["beta"]  # no forged registration
    if server == "coordinator":
        target.admin_call_works()
    else:
        target.job_runs_on(server)


def test_a_node_certificate_cannot_act_as_the_coordinator(target: Target) -> None:
    """beta's own valid certificate (and alpha's, at alpha) makes a TLS connection, and
    every Node call on it is refused; nothing runs."""
    for who in ("beta", "alpha"):
        channel, stub = target.node_stub("alpha", target.creds(who))
        with channel:
            for method in NODE_METHODS:
                assert _code(lambda m=method, s=stub: _call_node(s, m)) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "only the coordinator may call a node",
                ), (who, method)
    assert not PWNED.exists()
    channel, stub = target.node_stub("alpha", target.creds("coordinator"))
    with channel:
        assert all(
            j.attempt_id != "r1.1.a1" for j in stub.ListJobs(node_pb2.ListJobsRequest(), timeout=5).jobs
        )
    target.job_runs_on("alpha")


# --------------------------------------------------------------------------- 3. join tokens


def _join_cli(target: Target, token: str, name: str, state: Path, address: str | None = None) -> Any:
    return subprocess.run(
        [
            target.fleet.python,
            "-m",
            "node_agent",
            "join",
            address or target.join,
            "--token",
            token,
            "--name",
            name,
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        env=target.fleet.env,
        timeout=60,
    )


def _refused(result: Any, message: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flota: ") and message in lines[0], result.stderr


def _join_rpc(target: Target, token: str, name: str = "guesser") -> tuple[grpc.StatusCode, str]:
    """What a client on the LAN can send the enrollment port directly (no client
    certificate; the server's CA read from the port itself)."""
    host, _, port = target.join.rpartition(":")
    ca = ssl.get_server_certificate((host, int(port))).encode()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"node:{secrets.token_hex(8)}")]))
        .sign(key, hashes.SHA256())
    )
    request = coordinator_pb2.JoinRequest(
        token=token, csr_pem=csr.public_bytes(serialization.Encoding.PEM), name=name
    )
    options = [("grpc.ssl_target_name_override", CA_SERVER_NAME)]
    with grpc.secure_channel(target.join, grpc.ssl_channel_credentials(ca), options) as channel:
        stub = coordinator_pb2_grpc.EnrollmentStub(channel)
        return _code(lambda: stub.Join(request, timeout=5))


def _tokens(target: Target) -> dict[str, tuple[str, float, float | None]]:
    with contextlib.closing(sqlite3.connect(target.home / "coordinator" / "flota.db", timeout=5)) as db:
        rows = db.execute("SELECT id, secret_hash, expires_at, used_at FROM tokens").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_a_join_token_works_once(target: Target, tmp_path: Path) -> None:
    _, token = target.fleet.token()
    assert _join_cli(target, token, "gamma", tmp_path / "gamma").returncode == 0
    again = _join_cli(target, token, "delta", tmp_path / "delta")
    _refused(again, "join refused: invalid or already used join token")
    assert not (tmp_path / "delta" / "identity" / "node.pem").exists()
    assert "delta" not in target.fleet.nodes()
    assert _join_rpc(target, token) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "invalid or already used join token",
    )
    target.admin_call_works()


def test_an_expired_join_token_is_refused(target: Target, tmp_path: Path) -> None:
    """A token row whose expiry has passed, written straight into the coordinator's store."""
    from coordinator.pki import make_token, secret_hash

    fingerprint = json.loads((target.home / "coordinator" / "coordinator.json").read_text())["ca_fingerprint"]
    token = make_token(fingerprint)
    now = time.time()
    with contextlib.closing(sqlite3.connect(target.home / "coordinator" / "flota.db", timeout=5)) as db:
        db.execute(
            "INSERT INTO tokens (id, secret_hash, created_at, expires_at) VALUES (?, ?, ?, ?)",
            (token.id, secret_hash(token), now - 3600, now - 60),
        )
        db.commit()
    _refused(_join_cli(target, str(token), "late", tmp_path / "late"), "join token expired; create a new one")
    assert _tokens(target)[token.id][2] is None  # not used up by the refusal
    assert not (tmp_path / "late" / "identity" / "node.pem").exists()
    target.admin_call_works()


def test_guessed_join_tokens_are_refused_and_burn_nothing(target: Target, tmp_path: Path) -> None:
    _, text = target.fleet.token()
    real = JoinToken.parse(text)
    guesses = [
        JoinToken(real.id, secrets.token_urlsafe(24), real.ca_fingerprint),  # the id is not the secret
        JoinToken(secrets.token_hex(4), real.secret, real.ca_fingerprint),  # nor the other way round
        JoinToken(secrets.token_hex(4), secrets.token_urlsafe(24), real.ca_fingerprint),
    ]
    for guess in guesses:
        # One answer for every wrong guess: nothing tells a guesser which part was right.
        assert _join_rpc(target, str(guess)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "invalid or already used join token",
        ), guess
    _refused(
        _join_cli(target, str(guesses[0]), "guess", tmp_path / "guess"),
        "join refused: invalid or already used join token",
    )
    # The real token survived the guesses.
    assert _join_cli(target, text, "epsilon", tmp_path / "epsilon").returncode == 0
    assert _tokens(target)[real.id][2] is not None


class _RecordingServer:
    """A TLS gRPC server that answers every method and records who called what: a
    machine pretending to be the coordinator's enrollment port."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flota CA 0badc0de")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(CA_SERVER_NAME)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        recorder = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
                def record(request: bytes, context: Any) -> bytes:
                    recorder.calls.append((details.method, request))
                    return b""

                return grpc.unary_unary_rpc_method_handler(record)

        self.server.add_generic_rpc_handlers([Handler()])
        creds = grpc.ssl_server_credentials(
            [(_pem_key(ca_key), cert.public_bytes(serialization.Encoding.PEM))]
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()


def test_join_refuses_a_coordinator_whose_ca_is_not_the_tokens(target: Target, tmp_path: Path) -> None:
    """The token pins the CA. A genuine token taken to an impostor's port (a machine in
    the middle) is refused before the secret leaves the node; and a token whose pin was
    altered is refused by the node at the real port too."""
    _, text = target.fleet.token()
    token = JoinToken.parse(text)
    rogue = _RecordingServer()
    try:
        result = _join_cli(target, text, "mitm", tmp_path / "mitm", address=f"127.0.0.1:{rogue.port}")
        _refused(result, "does not match the token's CA hash")
        assert rogue.calls == []  # no call at all: the secret never went out
    finally:
        rogue.server.stop(0)
    other = JoinToken(token.id, token.secret, hashlib.sha256(b"another CA").hexdigest())
    _refused(
        _join_cli(target, str(other), "pinned", tmp_path / "pinned"), "does not match the token's CA hash"
    )
    assert not (tmp_path / "mitm" / "identity" / "node.pem").exists()
    assert _tokens(target)[token.id][2] is None  # neither attempt reached the coordinator
    assert _join_cli(target, text, "zeta", tmp_path / "zeta").returncode == 0


def test_the_store_keeps_only_token_hashes(target: Target, tmp_path: Path) -> None:
    made = [JoinToken.parse(target.fleet.token()[1]) for _ in range(3)]
    assert _join_cli(target, str(made[0]), "eta", tmp_path / "eta").returncode == 0  # a used one too
    stored = _tokens(target)
    state = target.home / "coordinator"
    files = sorted(state.glob("flota.db*"))
    assert {f.name for f in files} >= {"flota.db", "flota.db-wal"}, files
    data = b"".join(f.read_bytes() for f in files)
    for token in made:
        assert stored[token.id][0] == hashlib.sha256(token.secret.encode()).hexdigest()
        assert stored[token.id][0].encode() in data  # the hashes are where we looked
        assert token.secret.encode() not in data, f"the secret of token {token.id} is in the store"
        assert str(token).encode() not in data
        assert token.secret not in target.fleet.log("coordinator")


# --------------------------------------------------------------------------- 4. exhaustion


def _has_http2_dos_fixes(version: str) -> bool:
    """grpcio 1.59.0 (Oct 2023) carries the fixes for CVE-2023-44487 (HTTP/2 rapid reset)
    and CVE-2023-33953 (HPACK table accounting / unbounded memory)."""
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")[:2]]
    return tuple(parts) >= (1, 59)


def test_installed_grpcio_has_the_2023_http2_dos_fixes() -> None:
    assert [_has_http2_dos_fixes(v) for v in ("1.58.3", "1.59.0", "1.85.1", "2.0")] == [
        False,
        True,
        True,
        True,
    ]
    installed = importlib.metadata.version("grpcio")
    assert _has_http2_dos_fixes(installed), f"grpcio {installed} predates the 2023 HTTP/2 DoS fixes"


def test_oversized_messages_are_refused_and_the_daemons_keep_serving(target: Target) -> None:
    big = "x" * (MAX_MESSAGE_BYTES + 1024)
    # The attacker's client sends whatever it likes: its own send limit is lifted.
    unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    expect = (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max")

    def refused(call: Callable[[], object]) -> None:
        code, details = _code(call)
        assert (code, details.partition(" (")[0].removeprefix("SERVER: ")) == expect, details

    opts = [*unlimited, ("grpc.ssl_target_name_override", COORDINATOR_SERVER_NAME)]
    with grpc.secure_channel(target.api, target.creds("admin"), opts) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        refused(lambda: stub.SubmitRun(coordinator_pb2.SubmitRunRequest(name=big), timeout=10))
        assert stub.ListNodes(coordinator_pb2.ListNodesRequest(), timeout=5).nodes  # same connection
    opts = [*unlimited, ("grpc.ssl_target_name_override", node_server_name(target.ids["alpha"]))]
    with grpc.secure_channel(target.addresses["alpha"], target.creds("coordinator"), opts) as channel:
        stub = node_pb2_grpc.NodeStub(channel)
        refused(lambda: stub.StartJob(types_pb2.JobSpec(command=big), timeout=10))
        stub.ListJobs(node_pb2.ListJobsRequest(), timeout=5)
    host, _, port = target.join.rpartition(":")
    ca = ssl.get_server_certificate((host, int(port))).encode()
    opts = [*unlimited, ("grpc.ssl_target_name_override", CA_SERVER_NAME)]
    with grpc.secure_channel(target.join, grpc.ssl_channel_credentials(ca), opts) as channel:
        enroll = coordinator_pb2_grpc.EnrollmentStub(channel)
        refused(lambda: enroll.Join(coordinator_pb2.JoinRequest(token=big), timeout=10))
    assert _join_rpc(target, "flota1.bad")[0] == grpc.StatusCode.INVALID_ARGUMENT  # still answering
    target.job_runs_on("alpha")


def test_the_logs_of_a_job_with_long_lines_stay_readable(target: Target) -> None:
    """Oversized the other way: a job's own output must not make the coordinator build a
    message over the limit (10000 lines of 1000 bytes: 10 MB, within every cap)."""
    run = target.fleet.json("run", "--on", "beta", "--follow", "yes $(printf '%01000d' 7) | head -n 10000")
    assert run["status"] == "success", run
    logs = target.fleet.flota("logs", run["jobs"][0]["id"])
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.count("\n") == 10000


def test_a_body_that_does_not_decode_is_refused_in_one_line(target: Target) -> None:
    """Bytes that are no protobuf message: INVALID_ARGUMENT, and no traceback in a log."""
    garbage, malformed = b"\xff\xff\xff\xff", (grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
    channel, _ = target.node_stub("alpha", target.creds("coordinator"))
    with channel:
        start = channel.unary_unary("/flota.v1.Node/StartJob")
        session = channel.unary_stream("/flota.v1.Node/Session")
        assert _code(lambda: start(garbage, timeout=5)) == malformed
        assert _code(lambda: next(iter(session(garbage, timeout=5)))) == malformed
    channel, _ = target.api_stub(target.creds("admin"))
    with channel:
        submit = channel.unary_unary("/flota.v1.Coordinator/SubmitRun")
        assert _code(lambda: submit(garbage, timeout=5)) == malformed
    assert "DecodeError" not in target.fleet.log("alpha") + target.fleet.log("coordinator")
    target.job_runs_on("alpha")


def _tls_client(target: Target, who: str) -> ssl.SSLContext:
    key, cert = _key_and_cert(target, who)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=target.ca_pem.decode())
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def test_a_connection_flood_is_bounded_and_silent_connections_are_dropped(target: Target) -> None:
    """150 TLS connections (valid certificates, then silence) and 150 raw TCP connections
    that never start TLS, on the coordinator and on a node at once (fewer where this
    machine's file limit makes the servers' connection cap smaller than that)."""
    flood = min(150, (MAX_CONNECTIONS - 20) // 2)
    pids = {"coordinator": target.pid("coordinator"), "alpha": target.pid("alpha")}
    before = {k: (_rss_mb(p), _threads(p)) for k, p in pids.items()}
    endpoints = {"coordinator": (target.api, "admin"), "alpha": (target.addresses["alpha"], "coordinator")}
    held: list[socket.socket] = []
    raw: list[socket.socket] = []
    try:
        for address, who in endpoints.values():
            host, _, port = address.rpartition(":")
            ctx = _tls_client(target, who)
            for _ in range(flood):
                held.append(
                    ctx.wrap_socket(socket.create_connection((host, int(port)), 5), server_hostname=host)
                )
            for _ in range(flood):
                sock = socket.create_connection((host, int(port)), 5)
                sock.settimeout(0)
                raw.append(sock)
        opened = time.monotonic()
        target.admin_call_works()
        target.job_runs_on("alpha")
        for key, pid in pids.items():
            rss, threads = _rss_mb(pid), _threads(pid)
            assert rss - before[key][0] < 80, f"{key} grew {rss - before[key][0]:.0f} MB"
            assert threads <= before[key][1] + 4, f"{key} went from {before[key][1]} to {threads} threads"

        def all_dropped() -> bool:
            for sock in raw:
                try:
                    if sock.recv(1) != b"":
                        return False
                except BlockingIOError:
                    return False  # still open
                except OSError:
                    pass  # reset: dropped too
            return True

        wait_until(
            all_dropped, HANDSHAKE_TIMEOUT_S + 10, what="the servers to drop silent connections", period=0.5
        )
        assert time.monotonic() - opened >= HANDSHAKE_TIMEOUT_S - 2  # dropped by the timeout, not at once
    finally:
        for sock in held + raw:
            sock.close()
    target.admin_call_works()


def test_a_connection_flood_cannot_take_a_nodes_last_file_descriptor(target: Target) -> None:
    """A node that may open 256 files (1024 is a common default) and 400 connections
    that never say anything. Those past the server's cap are closed as they come; the
    node stays up, keeps its coordinator session, and runs a job meanwhile."""
    fleet = target.fleet
    lower = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
    limit = [fleet.python, "-c", lower + "os.execv(sys.argv[1], sys.argv[1:])"]
    fleet.start_node("tight", prefix=limit)
    proc = psutil.Process(fleet.procs["tight"].pid)
    assert proc.rlimit(psutil.RLIMIT_NOFILE) == (256, 256)
    host, _, port = fleet.nodes()["tight"]["address"].rpartition(":")
    flood = [socket.create_connection((host, int(port)), 5) for _ in range(400)]
    try:

        def closed_at_once() -> int:
            count = 0
            for sock in flood:
                sock.settimeout(0)
                try:
                    count += sock.recv(1) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    count += 1
            return count

        # 256 // 3 = 85 connections at most, the coordinator's among them.
        assert wait_until(lambda: closed_at_once() >= 400 - 85, 10, what="connections past the cap closed")
        assert fleet.procs["tight"].poll() is None, fleet.log("tight")
        assert proc.num_fds() < 200, proc.num_fds()
        target.job_runs_on("tight")
    finally:
        for sock in flood:
            sock.close()
    target.job_runs_on("tight")
    assert "Too many open files" not in fleet.log("tight")
    fleet.stop("tight")


def test_calls_that_never_send_their_request_cannot_starve_the_servers(target: Target) -> None:
    """A stolen node certificate (beta's) opens 100 calls at alpha and 100 at the
    coordinator and never sends their requests. Without a gate they would hold every
    call slot of both servers until their own deadline (they set none)."""
    beta = target.creds("beta")
    with (
        HeldCalls(
            target.addresses["alpha"],
            beta,
            node_server_name(target.ids["alpha"]),
            "/flota.v1.Node/ListJobs",
            100,
        ) as at_node,
        HeldCalls(
            target.api, beta, COORDINATOR_SERVER_NAME, "/flota.v1.Coordinator/RegisterNode", 100
        ) as at_api,
    ):
        ended, waiting = at_node.settle(lambda ended, waiting: waiting == 0)
        assert ended == {("PERMISSION_DENIED", "only the coordinator may call a node"): 100}
        ended, waiting = at_api.settle(lambda ended, waiting: sum(ended.values()) == 92)
        assert ended == {("RESOURCE_EXHAUSTED", "too many calls in flight from this peer (limit 8)"): 92}
        assert waiting == 8
        # Meanwhile the coordinator and the CLI are served as usual.
        target.admin_call_works()
        target.job_runs_on("alpha")
    wait_until(lambda: target.fleet.nodes()["beta"]["state"] == "online", what="beta still online")


def test_the_enrollment_port_bounds_silent_calls(target: Target, tmp_path: Path) -> None:
    """Anyone may reach the join port: a few calls per address, and a request must come
    within 5 s."""
    host, _, port = target.join.rpartition(":")
    ca = grpc.ssl_channel_credentials(ssl.get_server_certificate((host, int(port))).encode())
    with HeldCalls(target.join, ca, CA_SERVER_NAME, "/flota.v1.Enrollment/Join", 20) as held:
        ended, waiting = held.settle(lambda ended, waiting: sum(ended.values()) == 16)
        assert ended == {("RESOURCE_EXHAUSTED", "too many calls in flight from this peer (limit 4)"): 16}
        assert waiting == 4
        start = time.monotonic()
        ended, _ = held.settle(lambda ended, waiting: waiting == 0)
        assert ended[("DEADLINE_EXCEEDED", "no request within 5 s")] == 4, ended
        assert 3 < time.monotonic() - start < 8
    assert _join_cli(target, target.fleet.token()[1], "theta", tmp_path / "theta").returncode == 0


def test_a_call_flood_beyond_the_server_limit_is_bounded(target: Target) -> None:
    """Even trusted certificates get only so many calls at once: 300 open calls at the
    coordinator (admin) and 100 at a node (coordinator's certificate). The excess is
    refused RESOURCE_EXHAUSTED, the daemons stay small, and serve again after."""
    pids = {"coordinator": target.pid("coordinator"), "alpha": target.pid("alpha")}
    before = {k: (_rss_mb(p), _threads(p)) for k, p in pids.items()}
    limit_exceeded = ("RESOURCE_EXHAUSTED", "Concurrent RPC limit exceeded!")
    with (
        HeldCalls(
            target.api,
            target.creds("admin"),
            COORDINATOR_SERVER_NAME,
            "/flota.v1.Coordinator/ListRuns",
            300,
            connections=3,
        ) as at_api,
        HeldCalls(
            target.addresses["alpha"],
            target.creds("coordinator"),
            node_server_name(target.ids["alpha"]),
            "/flota.v1.Node/ListJobs",
            100,
        ) as at_node,
    ):
        ended, waiting = at_api.settle(lambda ended, waiting: sum(ended.values()) >= 300 - 256)
        assert set(ended) == {limit_exceeded} and waiting <= 256, (ended, waiting)
        # 64 slots, one of them the real coordinator's session.
        ended, waiting = at_node.settle(lambda ended, waiting: sum(ended.values()) >= 100 - 63)
        assert set(ended) == {limit_exceeded} and waiting <= 63, (ended, waiting)
        for key, pid in pids.items():
            rss, threads = _rss_mb(pid), _threads(pid)
            assert rss - before[key][0] < 80, f"{key} grew {rss - before[key][0]:.0f} MB"
            assert threads <= before[key][1] + 4, f"{key} went from {before[key][1]} to {threads} threads"
    target.admin_call_works()
    target.job_runs_on("alpha")


def test_a_reader_that_never_reads_blocks_no_one(target: Target) -> None:
    """Streams opened and never read: the node's Session (with the coordinator's own
    certificate), and a run's WatchRun with logs and a job's StreamLogs (admin). A chatty
    job on that node still reaches the real coordinator whole, others are served, and
    the daemons' memory stays bounded."""
    pids = {"coordinator": target.pid("coordinator"), "alpha": target.pid("alpha")}
    before = {k: _rss_mb(p) for k, p in pids.items()}
    peak = dict(before)
    # Its own connections, whose receive windows never grow past HTTP/2's initial 64 KiB:
    # what a client that stops reading its socket amounts to.
    stall = (("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0))
    node_channel, node = target.node_stub("alpha", target.creds("coordinator"), *stall)
    api_channel, api = target.api_stub(target.creds("admin"), *stall)
    with node_channel, api_channel:
        stalled = [node.Session(node_pb2.SessionRequest(heartbeat_s=0.1))]
        # 210 batches of 873 lines of 300 bytes (~256 KiB, one event each): more events than a
        # stalled session may have queued (node_agent/hub.py LOG_BACKLOG), paced so that a
        # session that reads keeps up; 55 MB in all, under the node's per-attempt line cap.
        chatty = "for i in $(seq 210); do yes $(printf '%0298d' 7) | head -n 873; sleep 0.01; done; echo done"
        run = target.fleet.json("run", "--on", "alpha", chatty)
        job_id = run["jobs"][0]["id"]
        stalled.append(api.WatchRun(coordinator_pb2.WatchRunRequest(run_id=run["id"], logs=True)))
        stalled.append(api.StreamLogs(coordinator_pb2.StreamLogsRequest(job_id=job_id, follow=True)))
        follower = subprocess.Popen(
            [target.fleet.python, "-m", "cli", "logs", job_id, "-f"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=target.fleet.env,
        )

        def finished() -> dict[str, Any] | None:
            for key, pid in pids.items():
                peak[key] = max(peak[key], _rss_mb(pid))
            start = time.monotonic()
            job: dict[str, Any] = target.fleet.json("status", job_id)
            assert time.monotonic() - start < 5, "the coordinator answered slowly"
            return job if job["status"] not in ("queued", "dispatching", "running") else None

        job = wait_until(finished, 60, what="the chatty job to end", period=0.2)
        out, err = follower.communicate(timeout=30)
        for call in stalled:
            call.cancel()
    assert job["status"] == "success", job
    # The stalled session filled its backlog and was passed over; the real one lost nothing.
    assert job["result"]["log_lines_lost"] in (0, "0"), job["result"]
    assert follower.returncode == 0, err
    assert job["result"]["log_tail"].rstrip().endswith("done"), job["result"]["log_tail"][-200:]
    assert out.count("\n") >= 49_999, out[-200:]  # the follower got what the coordinator keeps
    for key in pids:
        assert peak[key] - before[key] < 150, f"{key} grew {peak[key] - before[key]:.0f} MB"
    target.job_runs_on("alpha")


# --------------------------------------------------------------------------- 5. local files


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    """The daemons started meanwhile inherit `mask`: 0 hides nothing, so whatever comes
    out owner-only was made so on purpose."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _private(*paths: Path, directory: bool) -> None:
    for path in paths:
        assert _mode(path) == (0o700 if directory else 0o600), f"{path} is {oct(_mode(path))}"


def _start(fleet: Fleet, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [fleet.python, *argv], capture_output=True, text=True, env=fleet.env, timeout=30, cwd=fleet.home
    )


def test_node_keys_are_private_and_a_readable_one_stops_the_daemon(target: Target, tmp_path: Path) -> None:
    state = tmp_path / "iota"
    with _umask(0):
        assert _join_cli(target, target.fleet.token()[1], "iota", state).returncode == 0
    _private(state, state / "identity", directory=True)
    _private(state / "identity" / "node.key", directory=False)
    key = state / "identity" / "node.key"
    argv = ["-m", "node_agent", "start", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--no-mdns"]
    for loose in (0o640, 0o604):
        key.chmod(loose)
        result = _start(target.fleet, argv)
        _refused(result, f"{key} is readable by other users; run: chmod 600 {key}")
    target.admin_call_works()


@pytest.mark.parametrize("key", ["coordinator/ca/ca.key", "admin/key.pem", "coordinator/server/key.pem"])
def test_the_coordinator_refuses_a_key_others_can_read(fleet: Fleet, key: str) -> None:
    with _umask(0):
        fleet.start_coordinator()
    home = fleet.home
    _private(
        home / "coordinator",
        home / "coordinator" / "ca",
        home / "coordinator" / "server",
        home / "admin",
        directory=True,
    )
    _private(
        home / "coordinator" / "ca" / "ca.key",
        home / "coordinator" / "server" / "key.pem",
        home / "admin" / "key.pem",
        home / "coordinator" / "flota.db",
        directory=False,
    )
    assert fleet.stop("coordinator") == 0
    path = home / key
    path.chmod(0o644)
    argv = ["-m", "coordinator", "start", "--listen", "127.0.0.1:0", "--join-port", "0", "--no-mdns"]
    result = _start(fleet, argv)
    _refused(result, f"{path} is readable by other users; run: chmod 600 {path}")
    assert "Traceback" not in result.stderr
    path.chmod(0o600)
    fleet.start_coordinator()  # and with the mode fixed it starts, with the same CA
    assert fleet.json("nodes") == []
