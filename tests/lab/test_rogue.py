"""A rogue host on the LAN announces an enrolled node over real mDNS: the node's id and
name, its certificate fingerprint (copied from the real announcement: TXT is public),
and the address of a gRPC server of its own, whose certificate carries the node's
names but is not signed by the fleet's CA.

The coordinator may dial that address (mDNS is a hint), but never completes a TLS
handshake with it, so it never sends it a call; work keeps going to the real node and
`flota nodes` keeps the real node's address.

Run as a program (``python -m tests.lab.test_rogue ...``) this module is the rogue.
"""

from __future__ import annotations

import datetime as dt
import signal
import socket
import ssl
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from tests.fleet import ROOT
from tests.lab.netlab import Host
from tests.lab.test_multihost import Site, job_if, node_state, poll, site  # noqa: F401  (fixture)

pytestmark = pytest.mark.lab


# --------------------------------------------------------------------------- the rogue


def _impostor_certificate(node_id: str) -> tuple[bytes, bytes]:
    """Self-signed, with exactly the names a real node certificate for `node_id` has."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from protos.contract import node_cn, node_server_name

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_cn(node_id))])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_server_name(node_id))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _relay(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def rogue(address: str, node_id: str, name: str, fp: str, record: Path) -> None:
    """Serve gRPC (any method, any caller) behind a TCP relay on `address`:0 that notes
    each connection, and announce it over mDNS as node `node_id`. Writes to `record`:
    `READY <port>`, then `CONNECT <peer>` per connection and `RPC <method>` per call."""
    import grpc
    from zeroconf import IPVersion, ServiceInfo, Zeroconf

    from protos.contract import SERVICE_TYPE, TXT_FINGERPRINT, TXT_ID, TXT_PORT, TXT_VERSION

    lock = threading.Lock()

    def note(line: str) -> None:
        with lock, record.open("a") as f:
            f.write(line + "\n")

    class Anything(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            note(f"RPC {details.method}")
            return grpc.unary_unary_rpc_method_handler(lambda request, context: b"")

    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([Anything()])
    key, cert = _impostor_certificate(node_id)
    inner = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()

    listener = socket.create_server((address, 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        while True:
            conn, peer = listener.accept()
            note(f"CONNECT {peer[0]}")
            upstream = socket.create_connection(("127.0.0.1", inner))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_relay, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    instance = f"{name}-{node_id[:6]}"
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{instance}.{SERVICE_TYPE}",
        port=port,
        addresses=[socket.inet_aton(address)],
        properties={TXT_ID: node_id, TXT_VERSION: "0.1.0", TXT_PORT: str(port), TXT_FINGERPRINT: fp},
        server=f"rogue-{node_id[:6]}.local.",
    )
    zc = Zeroconf(ip_version=IPVersion.V4Only)
    zc.register_service(info, allow_name_change=True)
    note(f"READY {port}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    zc.unregister_service(info)
    zc.close()
    server.stop(0)


# --------------------------------------------------------------------------- the test


class Rogue:
    def __init__(self, host: Host, record: Path, proc: Any) -> None:
        self.host, self.record, self.proc = host, record, proc

    def lines(self) -> list[str]:
        assert self.proc.poll() is None, f"the rogue exited {self.proc.returncode}"
        try:
            return self.record.read_text().splitlines()
        except FileNotFoundError:
            return []

    def connects(self) -> int:
        return sum(line.startswith("CONNECT ") for line in self.lines())

    def rpcs(self) -> list[str]:
        return [line for line in self.lines() if line.startswith("RPC ")]


def _start_rogue(lab_site: Site, host: Host, node_id: str, name: str, fp: str) -> Rogue:
    record = host.dir / f"rogue-{time.monotonic_ns()}.log"
    proc = host.popen(
        [sys.executable, "-m", "tests.lab.test_rogue", host.address(), node_id, name, fp, str(record)],
        env=lab_site.fleet.env,
        cwd=ROOT,
    )
    found = Rogue(host, record, proc)
    poll(lambda: any(line.startswith("READY ") for line in found.lines()), what="the rogue to listen")
    return found


def test_a_rogue_mdns_announcement_never_gets_a_call(site: Site) -> None:  # noqa: F811
    fleet, rogue_host = site.fleet, site.hosts["desktop"]
    site.start_coordinator()
    site.start_node("laptop")
    real = fleet.nodes()["laptop"]
    node_id, real_address = real["info"]["id"], real["address"]
    assert real_address.startswith(site.hosts["laptop"].address() + ":")
    cert = (site.state_dir("laptop") / "identity" / "node.pem").read_text()
    from protos.contract import fingerprint

    real_fp = fingerprint(ssl.PEM_cert_to_DER_cert(cert))

    # An announcement with a fingerprint the coordinator did not issue is not even dialed.
    own_fp = fingerprint(ssl.PEM_cert_to_DER_cert(_impostor_certificate(node_id)[1].decode()))
    careless = _start_rogue(site, rogue_host, node_id, "laptop", own_fp)
    poll(
        lambda: (
            "ignoring an mDNS record for laptop with a foreign certificate fingerprint"
            in fleet.log("coordinator")
        ),
        what="the coordinator to ignore the foreign fingerprint",
    )
    assert careless.connects() == 0 and careless.rpcs() == []
    careless.proc.terminate()
    careless.proc.wait(10)

    # The same with the real fingerprint copied: now the address is a hint the coordinator
    # may try. While the real node serves, nothing changes.
    rogue = _start_rogue(site, rogue_host, node_id, "laptop", real_fp)
    submitted = fleet.json("run", "--on", "laptop", "hostname")
    _, job = poll(lambda: job_if(fleet, submitted["jobs"][0]["id"], "success", "failed"), what="job 1")
    assert (job["status"], job["node_name"]) == ("success", "laptop"), job
    assert fleet.flota("logs", job["id"], check=True).stdout == "laptop\n"
    assert fleet.nodes()["laptop"]["address"] == real_address

    # The real node dies (no goodbye): the coordinator dials what it knows, the rogue
    # included, over and over. Each dial dies in the TLS handshake.
    fleet.stop("laptop", sig=signal.SIGKILL)
    poll(lambda: rogue.connects() >= 2, what="the coordinator to dial the rogue")
    pending = fleet.json("run", "--on", "laptop", "hostname")
    _, status = poll(lambda: node_state(fleet, "laptop", "unreachable", "lost"), what="laptop unreachable")
    assert status["address"] == real_address, status
    assert fleet.json("status", pending["jobs"][0]["id"])["status"] == "queued"
    assert "cannot connect" in status["error"], status

    # The real node comes back: online at its own address, and the waiting job runs there.
    site.start_node("laptop", join=False)
    _, job = poll(lambda: job_if(fleet, pending["jobs"][0]["id"], "success", "failed"), what="job 2")
    assert (job["status"], job["node_name"]) == ("success", "laptop"), job
    assert [a["node_name"] for a in job["attempts"]] == ["laptop"]
    assert fleet.flota("logs", job["id"], check=True).stdout == "laptop\n"
    # (a new daemon, a new port: port 0 picked it)
    assert (
        fleet.nodes()["laptop"]["address"] == f"{site.hosts['laptop'].address()}:{site.node_port('laptop')}"
    )
    assert rogue.connects() >= 2
    assert rogue.rpcs() == [], rogue.rpcs()  # not one call, of any kind, ever reached it
    assert {line.split()[1] for line in rogue.lines() if line.startswith("CONNECT ")} == {site.ws.address()}
    # Each of those connections ended in the coordinator's refusal of the rogue's certificate.
    poll(
        lambda: (
            fleet.log("coordinator").count("CERTIFICATE_VERIFY_FAILED: self signed certificate")
            >= rogue.connects()
        ),
        what="a handshake refusal logged for each connection",
    )
    print(f"\n[rogue] {rogue.connects()} connections from the coordinator, 0 calls")


if __name__ == "__main__":
    rogue(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]))
