"""Mutual TLS with roles, against real daemons: a node takes work only from its
coordinator, the coordinator serves the CLI only to admins, and a node is who its
certificate says, whatever address or id is announced."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protos.channels import client_options
from protos.contract import COORDINATOR_SERVER_NAME, node_server_name
from protos.flota.v1 import coordinator_pb2, coordinator_pb2_grpc, node_pb2, node_pb2_grpc, types_pb2
from tests.fleet import Fleet, wait_until


def _creds(d: Path, key: str, cert: str, ca: str = "ca.pem") -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (d / ca).read_bytes(), (d / key).read_bytes(), (d / cert).read_bytes()
    )


def _foreign_identity(tmp: Path, cn: str, san: str) -> tuple[bytes, bytes]:
    """A key and certificate from a CA that is not the fleet's."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return (
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )


@pytest.fixture
def two_nodes(fleet: Fleet) -> Fleet:
    fleet.start_coordinator()
    fleet.start_node("alpha")
    fleet.start_node("beta")
    return fleet


def _node(fleet: Fleet, name: str) -> tuple[str, str, Path]:
    status = fleet.nodes()[name]
    return status["info"]["id"], status["address"], fleet.home / "nodes" / name / "identity"


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[attr-defined,no-any-return]


def test_node_refuses_anyone_but_its_coordinator(two_nodes: Fleet) -> None:
    fleet = two_nodes
    alpha_id, alpha_addr, _ = _node(fleet, "alpha")
    _, _, beta_dir = _node(fleet, "beta")
    spec = types_pb2.JobSpec(
        job_id="r1.1", run_id="r1", attempt_id="r1.1.a1", agent="shell", command="touch /tmp/x"
    )
    name = client_options(node_server_name(alpha_id))
    # The CLI's admin certificate is valid, but it is not the coordinator's.
    with grpc.secure_channel(alpha_addr, _creds(fleet.home / "admin", "key.pem", "cert.pem"), name) as ch:
        stub = node_pb2_grpc.NodeStub(ch)
        assert _code(lambda: stub.StartJob(spec, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
        assert (
            _code(lambda: stub.ListJobs(node_pb2.ListJobsRequest(), timeout=5))
            == grpc.StatusCode.PERMISSION_DENIED
        )
    # Another node's certificate: also refused.
    with grpc.secure_channel(alpha_addr, _creds(beta_dir, "node.key", "node.pem"), name) as ch:
        stub = node_pb2_grpc.NodeStub(ch)
        assert _code(lambda: stub.StartJob(spec, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    # No client certificate, or one from a foreign CA calling itself the coordinator: no handshake.
    ca = (fleet.home / "admin" / "ca.pem").read_bytes()
    with grpc.secure_channel(alpha_addr, grpc.ssl_channel_credentials(ca), name) as ch:
        stub = node_pb2_grpc.NodeStub(ch)
        assert _code(lambda: stub.StartJob(spec, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    key, cert = _foreign_identity(fleet.home, "coordinator", COORDINATOR_SERVER_NAME)
    with grpc.secure_channel(alpha_addr, grpc.ssl_channel_credentials(ca, key, cert), name) as ch:
        stub = node_pb2_grpc.NodeStub(ch)
        assert _code(lambda: stub.StartJob(spec, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    # And the node still serves its coordinator.
    assert fleet.flota("run", "--on", "alpha", "--follow", "true").returncode == 0


def test_coordinator_serves_the_cli_only_to_admins(two_nodes: Fleet) -> None:
    fleet = two_nodes
    coord = fleet.home / "admin" / "coordinator"
    address = coord.read_text().strip()
    alpha_id, _, alpha_dir = _node(fleet, "alpha")
    _, _, beta_dir = _node(fleet, "beta")
    name = client_options(COORDINATOR_SERVER_NAME)
    submit = coordinator_pb2.SubmitRunRequest(tasks=[coordinator_pb2.TaskSpec(command="true")])
    with grpc.secure_channel(address, _creds(alpha_dir, "node.key", "node.pem"), name) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        assert _code(lambda: stub.SubmitRun(submit, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
        assert _code(lambda: stub.CreateToken(coordinator_pb2.CreateTokenRequest(), timeout=5)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    # A node may register only itself: beta claiming alpha's id is refused.
    forged = coordinator_pb2.RegisterNodeRequest(
        info=types_pb2.NodeInfo(id=alpha_id, addresses=["127.0.0.1:1"])
    )
    with grpc.secure_channel(address, _creds(beta_dir, "node.key", "node.pem"), name) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        assert _code(lambda: stub.RegisterNode(forged, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    ca = (fleet.home / "admin" / "ca.pem").read_bytes()
    key, cert = _foreign_identity(fleet.home, "admin:mallory", "admin.flota")
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert), name) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        assert _code(lambda: stub.SubmitRun(submit, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    assert fleet.nodes()["alpha"]["state"] == "online"


def test_coordinator_dials_a_node_only_under_its_own_certificate(fleet: Fleet) -> None:
    """An address claimed for node A where node B listens (what a rogue mDNS
    announcement amounts to) never makes A online: the TLS name check fails."""
    fleet.start_coordinator()
    alpha_state = fleet.join("alpha")  # enrolled, never started
    fleet.start_node("beta")
    alpha_id = (alpha_state / "identity" / "id").read_text().strip()
    beta_addr = fleet.nodes()["beta"]["address"]
    fleet.stop("coordinator")
    (fleet.home / "coordinator" / "coordinator.toml").write_text(f'nodes = ["{alpha_id}@{beta_addr}"]\n')
    fleet.start_coordinator()
    fleet.wait_node("beta", "online")

    def alpha_error() -> str:
        return str(fleet.nodes()["alpha"]["error"])

    assert "cannot connect" in wait_until(alpha_error, what="alpha dial error")
    assert fleet.nodes()["alpha"]["state"] == "unknown"
    # Work pinned to alpha waits; nothing reaches beta in its name.
    run = fleet.json("run", "--on", "alpha", "touch should-not-run")
    job = fleet.json("status", run["jobs"][0]["id"])
    assert job["status"] == "queued" and job["attempts"] == []


def test_static_node_from_config_is_found_without_registration(fleet: Fleet) -> None:
    """Nodes listed in coordinator.toml are dialed even when they cannot register."""
    fleet.start_coordinator()
    state = fleet.join("static")
    node_id = (state / "identity" / "id").read_text().strip()
    (state / "identity" / "coordinator").write_text("127.0.0.1:9")  # registration cannot work
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fleet.stop("coordinator")
    (fleet.home / "coordinator" / "coordinator.toml").write_text(f'nodes = ["{node_id}@127.0.0.1:{port}"]\n')
    fleet.start_coordinator()
    fleet.start_node("static", join=False, listen=f"127.0.0.1:{port}")
    assert fleet.nodes()["static"]["address"] == f"127.0.0.1:{port}"
    env = {"FLOTA_COORDINATOR": (fleet.home / "admin" / "coordinator").read_text().strip()}
    assert fleet.flota("run", "--follow", "echo via static", env=env).returncode == 0


def test_a_join_token_cannot_take_over_an_enrolled_id(two_nodes: Fleet, tmp_path: Path) -> None:
    """Node ids are public (mDNS TXT). A token holder asking for a certificate for an
    enrolled id is refused, and the real node keeps working."""
    import shutil
    import subprocess

    fleet = two_nodes
    alpha_id, _, _ = _node(fleet, "alpha")
    thief = tmp_path / "thief"
    (thief / "identity").mkdir(parents=True)
    (thief / "identity" / "id").write_text(alpha_id)
    address, token = fleet.token()
    result = subprocess.run(
        [
            fleet.python,
            "-m",
            "node_agent",
            "join",
            address,
            "--token",
            token,
            "--name",
            "impostor",
            "--state-dir",
            str(thief),
        ],
        capture_output=True,
        text=True,
        env=fleet.env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "already enrolled" in result.stderr and "Traceback" not in result.stderr
    assert not (thief / "identity" / "node.pem").exists()
    shutil.rmtree(thief)
    assert fleet.nodes()["alpha"]["state"] == "online"
    assert fleet.flota("run", "--on", "alpha", "--follow", "true").returncode == 0
