"""The coordinator's private CA: its key, the certificates it signs, and join tokens.

Roles live in the subject CN (`coordinator`, `node:<id>`, `admin:<name>`); the name a
TLS client checks lives in the SAN (`coordinator.flota`, `<id>.node.flota`), so dialing
a node by the id mDNS announced fails unless the node holds that id's certificate.

Error handling: every failure to read, parse or sign raises PkiError with one line.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.errors import PkiError
from protos.contract import (
    ADMIN_CN_PREFIX,
    CA_SERVER_NAME,
    COORDINATOR_CN,
    COORDINATOR_SERVER_NAME,
    JoinToken,
    fingerprint,
    node_cn,
    node_server_name,
)
from protos.limits import NODE_ID_RE

__all__ = [
    "CertificateAuthority",
    "KeyPair",
    "PkiError",
    "make_token",
    "read_private",
    "secret_hash",
    "token_matches",
    "write_private",
]

CERT_DAYS = 365
CA_DAYS = 3650


@dataclass(frozen=True, slots=True)
class KeyPair:
    key_pem: bytes
    cert_pem: bytes


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, creating it with that mode from the start."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_private(path: Path) -> bytes:
    """Read a private key, refusing one that other users may read or change: a key
    anyone else on the machine could copy is no longer this fleet's secret."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PkiError(f"{path} is readable by other users; run: chmod 600 {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class CertificateAuthority:
    """A CA kept as `ca.key` (0600) and `ca.pem` in one directory."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert
        self.cert_pem = _cert_pem(cert)
        self.key_pem = _key_pem(key)
        self.fingerprint = fingerprint(cert.public_bytes(serialization.Encoding.DER))

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        if key_path.exists() and cert_path.exists():
            key_pem = read_private(key_path)
            try:
                key = serialization.load_pem_private_key(key_pem, password=None)
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            except (OSError, ValueError) as exc:
                raise PkiError(f"cannot read the CA in {directory}: {exc}") from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise PkiError(f"{key_path} is not an EC private key")
            return cls(key, cert)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"flota CA {secrets.token_hex(4)}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            # The enrollment port serves this certificate itself, so it names that server.
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(CA_SERVER_NAME)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(key, cert)
        write_private(key_path, ca.key_pem)
        cert_path.write_bytes(ca.cert_pem)
        return ca

    def _sign(
        self, public_key: ec.EllipticCurvePublicKey, cn: str, san: str, days: int = CERT_DAYS
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )

    def issue(self, cn: str, san: str) -> KeyPair:
        """A fresh key and a certificate for it (coordinator and admin identities)."""
        key = ec.generate_private_key(ec.SECP256R1())
        return KeyPair(_key_pem(key), _cert_pem(self._sign(key.public_key(), cn, san)))

    def issue_coordinator(self) -> KeyPair:
        return self.issue(COORDINATOR_CN, COORDINATOR_SERVER_NAME)

    def issue_admin(self, name: str) -> KeyPair:
        return self.issue(f"{ADMIN_CN_PREFIX}{name}", "admin.flota")

    def sign_node_csr(self, csr_pem: bytes, node_id: str) -> bytes:
        """Sign a node's CSR for `node_id`, whatever names the CSR itself asks for."""
        if not NODE_ID_RE.match(node_id):
            raise PkiError(f"invalid node id {node_id!r}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PkiError("the certificate request is not a valid PEM CSR") from exc
        if not csr.is_signature_valid:
            raise PkiError("the certificate request's signature is invalid")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise PkiError("node keys must be EC keys")
        return _cert_pem(self._sign(public_key, node_cn(node_id), node_server_name(node_id)))


def make_token(ca_fingerprint: str) -> JoinToken:
    return JoinToken(secrets.token_hex(4), secrets.token_urlsafe(24), ca_fingerprint)


def secret_hash(token: JoinToken) -> str:
    """What the store keeps: the secret itself is never written down."""
    return hashlib.sha256(token.secret.encode()).hexdigest()


def token_matches(token: JoinToken, stored_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(token), stored_hash)
