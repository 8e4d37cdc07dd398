"""`flota doctor` on real state written by a real coordinator and node, then broken on
purpose: each problem is reported with its fix, and a failure makes the exit code 1."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fleet import Fleet

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        yield f
    finally:
        f.close()


def checks(fleet: Fleet) -> tuple[int, dict[tuple[str, str], dict[str, Any]]]:
    result = fleet.flota("--json", "doctor")
    assert "Traceback" not in result.stderr, result.stderr
    found = {(c["where"].split(" ")[0], c["check"]): c for c in json.loads(result.stdout)}
    return result.returncode, found


def cert_valid_for(days: float) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin:test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_doctor_reports_each_problem_with_its_fix(fleet: Fleet) -> None:
    fleet.start_coordinator()
    fleet.start_node("n", state=fleet.home / "node")
    code, found = checks(fleet)
    assert code == 0
    for key in [
        ("coordinator", "CA private key"),
        ("coordinator", "CA certificate"),
        ("coordinator", "state directory"),
        ("admin", "admin key"),
        ("node", "node key"),
        ("node", "node certificate"),
        ("node", "exposure"),
    ]:
        assert found[key]["status"] == "ok", found[key]
    assert found[("node", "remote allow-list")]["status"] == "warn"
    assert "--allow-remote" in found[("node", "remote allow-list")]["fix"]

    key = fleet.home / "node" / "identity" / "node.key"
    os.chmod(key, 0o644)
    (fleet.home / "admin" / "cert.pem").write_bytes(cert_valid_for(10))
    daemon = fleet.home / "node" / "daemon.json"
    state = json.loads(daemon.read_text())
    daemon.write_text(json.dumps({**state, "addresses": ["93.184.216.34:7380", "127.0.0.1:7380"]}))
    code, found = checks(fleet)
    assert code == 1
    assert found[("node", "node key")]["status"] == "fail"
    assert found[("node", "node key")]["fix"] == f"chmod 600 {key}"
    assert found[("admin", "admin certificate")]["status"] == "warn"
    assert "expires in" in found[("admin", "admin certificate")]["detail"]
    assert found[("node", "exposure")]["status"] == "warn"
    assert "93.184.216.34:7380" in found[("node", "exposure")]["detail"]

    (fleet.home / "admin" / "cert.pem").write_bytes(cert_valid_for(-1))
    _, found = checks(fleet)
    assert found[("admin", "admin certificate")]["status"] == "fail"
    text = fleet.flota("doctor")
    assert text.returncode == 1 and f"fix: chmod 600 {key}" in text.stdout


def test_doctor_checks_the_database_log_and_index_too(fleet: Fleet) -> None:
    """SQLite's -wal and -shm files hold recent rows: doctor checks them like the database."""
    fleet.start_coordinator()
    fleet.flota("run", "echo hi", check=True)  # a write, while the coordinator holds the log open
    state = fleet.home / "coordinator"
    wal, shm = state / "flota.db-wal", state / "flota.db-shm"
    assert wal.exists() and shm.exists()
    code, found = checks(fleet)
    assert code == 0
    assert found[("coordinator", "database log")]["status"] == "ok"
    assert found[("coordinator", "database index")]["status"] == "ok"
    os.chmod(wal, 0o644)
    code, found = checks(fleet)
    assert code == 1
    assert found[("coordinator", "database log")]["fix"] == f"chmod 600 {wal}"
