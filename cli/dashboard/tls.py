"""HTTPS for `flota dashboard --public` (or `--cert/--key` on any address).

With `--cert PEM --key PEM` the dashboard serves the user's certificate. Otherwise it
signs one itself with the fleet's CA, which is on this machine when the coordinator is
(`$FLOTA_HOME/coordinator/ca/`, as coordinator/pki.py keeps it): an EC key and a
certificate for the addresses it listens on (every address of this machine for 0.0.0.0
or ::), valid CERT_DAYS, made anew at each start and never written anywhere but a
private temporary directory while it is loaded. A browser that trusts the fleet's CA
(`$FLOTA_HOME/admin/ca.pem`) trusts the dashboard.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import tempfile
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cli.client import CliError
from protos.contract import flota_home

__all__ = ["CERT_DAYS", "server_context"]

CERT_DAYS = 30


def server_context(cert: str | None, key: str | None, host: str) -> tuple[ssl.SSLContext, str]:
    """The TLS context to serve with, and a line saying whose certificate it is."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise CliError(f"cannot serve HTTPS with --cert {cert} --key {key}: {why}") from None
        return context, f"HTTPS with the certificate {cert}"
    key_pem, cert_pem = _fleet_certificate(host)
    with tempfile.TemporaryDirectory(prefix="flota-dashboard-tls-") as tmp:
        paths = Path(tmp) / "key.pem", Path(tmp) / "cert.pem"
        for path, data in zip(paths, (key_pem, cert_pem), strict=True):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(paths[1], paths[0])
    ca = flota_home() / "admin" / "ca.pem"
    return context, f"HTTPS with a certificate from the fleet's CA (a browser that trusts {ca} trusts it)"


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    directory = flota_home() / "coordinator" / "ca"
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    if not key_path.exists():
        raise CliError(
            f"HTTPS needs a certificate: this machine has no fleet CA ({key_path}); "
            "run the dashboard where the coordinator runs, or give --cert PEM --key PEM"
        )
    try:
        if key_path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CliError(f"{key_path} is readable by other users; run: chmod 600 {key_path}")
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the fleet's CA in {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CliError(f"{key_path} is not an EC private key")
    return key, ca_cert


def _names(host: str) -> list[x509.GeneralName]:
    """The names a browser may reach the dashboard by."""
    ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    if host == "localhost":
        pass
    elif ipaddress.ip_address(host).is_unspecified:
        for addresses in psutil.net_if_addrs().values():
            for a in addresses:
                try:
                    ips.add(ipaddress.ip_address(a.address.split("%")[0]))
                except ValueError:
                    continue  # a MAC address
    else:
        ips.add(ipaddress.ip_address(host))
    dns = sorted({"localhost", socket.gethostname()})
    return [*(x509.DNSName(d) for d in dns), *(x509.IPAddress(ip) for ip in sorted(ips, key=str))]


def _fleet_certificate(host: str) -> tuple[bytes, bytes]:
    ca_key, ca_cert = _ca()
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flota dashboard")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)
