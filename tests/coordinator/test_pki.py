"""coordinator/pki.py: the CA on disk, the identities it signs, and join-token secrets."""

from __future__ import annotations

import datetime as dt
import hmac
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.pki import CertificateAuthority, KeyPair, PkiError, make_token, secret_hash, token_matches
from protos.contract import JoinToken, fingerprint

NODE_ID = "abcd1234ef"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"))


def _csr(key: object, cn: str = f"node:{NODE_ID}", sans: tuple[str, ...] = ()) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
        )
    hash_alg = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, hash_alg).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


def _assert_issued_by(cert: x509.Certificate, ca: CertificateAuthority) -> None:
    assert cert.issuer == ca.cert.subject
    cert.verify_directly_issued_by(ca.cert)  # raises if the signature does not verify
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


# --- the CA on disk -----------------------------------------------------------------------


def test_ca_created_with_private_key_and_reloaded(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "ca"
    first = CertificateAuthority.load_or_create(directory)
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert cert_path.read_bytes() == first.cert_pem
    assert not list(directory.glob("*.tmp"))

    again = CertificateAuthority.load_or_create(directory)
    assert again.fingerprint == first.fingerprint
    assert again.cert_pem == first.cert_pem
    assert again.key_pem == first.key_pem


def test_ca_certificate_is_a_self_signed_ca(ca: CertificateAuthority) -> None:
    ca.cert.verify_directly_issued_by(ca.cert)
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.fingerprint == fingerprint(ca.cert.public_bytes(serialization.Encoding.DER))
    assert _sans(ca.cert) == ["ca.flota"]


def test_two_cas_differ(tmp_path: Path) -> None:
    a = CertificateAuthority.load_or_create(tmp_path / "a")
    b = CertificateAuthority.load_or_create(tmp_path / "b")
    assert a.fingerprint != b.fingerprint


def _rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("key_bytes", "message"),
    [
        pytest.param(b"not a key", "cannot read the CA", id="garbage-key"),
        pytest.param(None, "is not an EC private key", id="rsa-key"),
    ],
)
def test_unusable_ca_on_disk(tmp_path: Path, key_bytes: bytes | None, message: str) -> None:
    directory = tmp_path / "ca"
    CertificateAuthority.load_or_create(directory)
    (directory / "ca.key").write_bytes(key_bytes if key_bytes is not None else _rsa_pem())
    with pytest.raises(PkiError, match=message) as info:
        CertificateAuthority.load_or_create(directory)
    assert "\n" not in str(info.value)


def test_garbage_ca_certificate(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    CertificateAuthority.load_or_create(directory)
    (directory / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(PkiError, match="cannot read the CA"):
        CertificateAuthority.load_or_create(directory)


# --- identities ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issue", "cn", "san"),
    [
        pytest.param(lambda ca: ca.issue_coordinator(), "coordinator", "coordinator.flota", id="coordinator"),
        pytest.param(lambda ca: ca.issue_admin("alice"), "admin:alice", "admin.flota", id="admin"),
    ],
)
def test_issued_identity(
    ca: CertificateAuthority, issue: Callable[[CertificateAuthority], KeyPair], cn: str, san: str
) -> None:
    pair = issue(ca)
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    assert _cn(cert) == cn
    assert _sans(cert) == [san]
    _assert_issued_by(cert, ca)
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()


def test_each_issue_gets_a_fresh_key(ca: CertificateAuthority) -> None:
    a, b = ca.issue_coordinator(), ca.issue_coordinator()
    assert a.key_pem != b.key_pem
    assert x509.load_pem_x509_certificate(a.cert_pem).serial_number != (
        x509.load_pem_x509_certificate(b.cert_pem).serial_number
    )


@pytest.mark.parametrize(
    ("cn", "sans"),
    [
        pytest.param(f"node:{NODE_ID}", (), id="honest"),
        pytest.param("coordinator", ("coordinator.flota",), id="asks-for-coordinator"),
        pytest.param("admin:root", ("admin.flota",), id="asks-for-admin"),
        pytest.param("node:othernode1", ("othernode1.node.flota", "*.flota"), id="asks-for-another-node"),
    ],
)
def test_node_csr_gets_only_the_given_identity(
    ca: CertificateAuthority, cn: str, sans: tuple[str, ...]
) -> None:
    key = _ec_key()
    cert = x509.load_pem_x509_certificate(ca.sign_node_csr(_csr(key, cn, sans), NODE_ID))
    assert _cn(cert) == f"node:{NODE_ID}"
    assert len(cert.subject) == 1
    assert _sans(cert) == [f"{NODE_ID}.node.flota"]
    assert cert.public_key() == key.public_key()
    _assert_issued_by(cert, ca)


def test_node_csr_on_another_curve_is_signed(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = x509.load_pem_x509_certificate(ca.sign_node_csr(_csr(key), NODE_ID))
    assert cert.public_key() == key.public_key()


@pytest.mark.parametrize(
    "node_id", ["", "abc", "ABCD1234EF", "abcd-1234", "a" * 33, "../../etc", "abcd1234 ", " abcd1234"]
)
def test_invalid_node_id_rejected(ca: CertificateAuthority, node_id: str) -> None:
    with pytest.raises(PkiError, match="invalid node id"):
        ca.sign_node_csr(_csr(_ec_key()), node_id)


def test_node_id_with_trailing_newline_rejected(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="invalid node id"):
        ca.sign_node_csr(_csr(_ec_key(), cn=f"node:{NODE_ID}\n"), f"{NODE_ID}\n")


def _bad_signature(csr_pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte is the tail of the signature's s value
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda: b"", "not a valid PEM CSR", id="empty"),
        pytest.param(lambda: b"garbage", "not a valid PEM CSR", id="garbage"),
        pytest.param(
            lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "not a valid PEM CSR",
            id="bad-der",
        ),
        pytest.param(lambda: _bad_signature(_csr(_ec_key())), "signature is invalid", id="bad-signature"),
        pytest.param(
            lambda: _csr(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "must be EC keys",
            id="rsa-key",
        ),
        pytest.param(lambda: _csr(ed25519.Ed25519PrivateKey.generate()), "must be EC keys", id="ed25519-key"),
    ],
)
def test_unusable_csr_rejected(ca: CertificateAuthority, make: Callable[[], bytes], message: str) -> None:
    with pytest.raises(PkiError, match=message) as info:
        ca.sign_node_csr(make(), NODE_ID)
    assert "\n" not in str(info.value)


# --- join tokens --------------------------------------------------------------------------


def test_token_pins_the_ca_and_round_trips(ca: CertificateAuthority) -> None:
    token = make_token(ca.fingerprint)
    assert token.ca_fingerprint == ca.fingerprint
    assert JoinToken.parse(str(token)) == token


def test_tokens_are_unique() -> None:
    tokens = [make_token("ab" * 32) for _ in range(50)]
    assert len({t.id for t in tokens}) == 50
    assert len({t.secret for t in tokens}) == 50


def test_secret_hash_is_hex_sha256_of_the_secret_only() -> None:
    token = make_token("ab" * 32)
    stored = secret_hash(token)
    assert len(stored) == 64 and all(c in "0123456789abcdef" for c in stored)
    assert token.secret not in stored
    # The id and the CA pin are not part of what is hashed.
    assert secret_hash(JoinToken("ffffffff", token.secret, "cd" * 32)) == stored


def _one_char_off(secret: str) -> str:
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


@pytest.mark.parametrize(
    ("presented", "ok"),
    [
        pytest.param(lambda t: t, True, id="same"),
        pytest.param(lambda t: JoinToken(t.id, _one_char_off(t.secret), t.ca_fingerprint), False, id="1-off"),
        pytest.param(lambda t: make_token(t.ca_fingerprint), False, id="other-token"),
    ],
)
def test_token_matches(presented: Callable[[JoinToken], JoinToken], ok: bool) -> None:
    token = make_token("ab" * 32)
    assert token_matches(presented(token), secret_hash(token)) is ok


@pytest.mark.parametrize("stored", ["", "00", "x" * 64])
def test_token_matches_odd_stored_hash(stored: str) -> None:
    assert token_matches(make_token("ab" * 32), stored) is False


def test_token_matches_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    token = make_token("ab" * 32)
    assert token_matches(token, secret_hash(token))
    assert calls == [(secret_hash(token), secret_hash(token))]
