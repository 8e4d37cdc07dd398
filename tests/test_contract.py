"""protos/contract.py: the join token format and the names both sides derive from an id."""

from __future__ import annotations

import hashlib

import pytest

from protos.contract import JoinToken, TokenError, fingerprint, node_cn, node_server_name, parse_hostport
from protos.limits import NODE_ID_RE

TOKEN_ID = "0123abcd"
SECRET = "s3cret-Secret_0123456789"
CA_HASH = "ab" * 32
GOOD = f"flota1.{TOKEN_ID}.{SECRET}.{CA_HASH}"


def test_token_parse_and_str_round_trip() -> None:
    token = JoinToken.parse(GOOD)
    assert token == JoinToken(TOKEN_ID, SECRET, CA_HASH)
    assert str(token) == GOOD
    assert JoinToken.parse(str(token)) == token


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        f"  {GOOD}\n",  # pasted with a newline: the surrounding whitespace goes
        f"flota1.{TOKEN_ID}.{'a' * 16}.{CA_HASH}",  # shortest secret
        f"flota1.{TOKEN_ID}.{'a' * 64}.{CA_HASH}",  # longest secret
    ],
)
def test_token_accepted(text: str) -> None:
    assert str(JoinToken.parse(text)) == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(GOOD.replace("flota1", "flota2", 1), id="wrong-prefix"),
        pytest.param(GOOD.replace("flota1", "FLOTA1", 1), id="prefix-uppercase"),
        pytest.param(f"{TOKEN_ID}.{SECRET}.{CA_HASH}", id="three-parts"),
        pytest.param(f"{GOOD}.extra", id="five-parts"),
        pytest.param(f"flota1.{TOKEN_ID}..{CA_HASH}", id="empty-secret"),
        pytest.param(f"flota1.0123abcg.{SECRET}.{CA_HASH}", id="id-not-hex"),
        pytest.param(f"flota1.0123ABCD.{SECRET}.{CA_HASH}", id="id-uppercase"),
        pytest.param(f"flota1.0123abc.{SECRET}.{CA_HASH}", id="id-short"),
        pytest.param(f"flota1.0123abcde.{SECRET}.{CA_HASH}", id="id-long"),
        pytest.param(f"flota1.{TOKEN_ID}.{'a' * 15}.{CA_HASH}", id="secret-short"),
        pytest.param(f"flota1.{TOKEN_ID}.{'a' * 65}.{CA_HASH}", id="secret-long"),
        pytest.param(f"flota1.{TOKEN_ID}.{SECRET}+/.{CA_HASH}", id="secret-not-urlsafe"),
        pytest.param(f"flota1.{TOKEN_ID}.{SECRET}.{'AB' * 32}", id="hash-uppercase"),
        pytest.param(f"flota1.{TOKEN_ID}.{SECRET}.{'ab' * 31}", id="hash-short"),
        pytest.param(f"flota1.{TOKEN_ID}.{SECRET}.{'ab' * 32}0", id="hash-long"),
        pytest.param(f"flota1.{TOKEN_ID}.{SECRET}.{'zz' * 32}", id="hash-not-hex"),
        pytest.param(f"flota1. {TOKEN_ID}.{SECRET}.{CA_HASH}", id="space-inside"),
        pytest.param(f"flota1.{TOKEN_ID}.{SECRET[:8]} {SECRET[8:]}.{CA_HASH}", id="space-in-secret"),
        pytest.param(f"flota1.{TOKEN_ID}.{SECRET}.{CA_HASH[:32]}\n{CA_HASH[32:]}", id="newline-inside"),
        pytest.param(f"flota1.{TOKEN_ID}.{SECRET}.{CA_HASH}\x00", id="nul-suffix"),
    ],
)
def test_malformed_token_rejected(text: str) -> None:
    with pytest.raises(TokenError, match="malformed join token"):
        JoinToken.parse(text)


def test_token_error_is_a_value_error() -> None:
    # Callers that only know ValueError still catch a bad token.
    assert issubclass(TokenError, ValueError)


def test_fingerprint_is_sha256_hex_of_der() -> None:
    assert fingerprint(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    der = bytes(range(256))
    assert fingerprint(der) == hashlib.sha256(der).hexdigest()
    assert len(fingerprint(der)) == 64


def test_node_names() -> None:
    assert node_cn("abcd1234") == "node:abcd1234"
    assert node_server_name("abcd1234") == "abcd1234.node.flota"


@pytest.mark.parametrize(
    ("node_id", "ok"),
    [
        ("abcd1234", True),
        ("a" * 32, True),
        ("0" * 8, True),
        ("abcd123", False),  # 7 chars
        ("a" * 33, False),
        ("ABCD1234", False),
        ("abcd-1234", False),
        ("abcd.1234", False),
        ("", False),
    ],
)
def test_node_id_pattern(node_id: str, ok: bool) -> None:
    assert bool(NODE_ID_RE.match(node_id)) is ok


# --- parse_hostport -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "default_host", "expected"),
    [
        ("10.0.0.1:80", "0.0.0.0", ("10.0.0.1", 80)),
        ("host.example:8080", "0.0.0.0", ("host.example", 8080)),
        ("host.example", "0.0.0.0", ("host.example", 7370)),  # no port: the default
        (" host.example:81 \n", "0.0.0.0", ("host.example", 81)),
        (":9000", "0.0.0.0", ("0.0.0.0", 9000)),  # no host: the default
        (":9000", "", ("", 9000)),
        ("", "0.0.0.0", ("0.0.0.0", 7370)),
        ("host:0", "0.0.0.0", ("host", 0)),  # port 0: pick a free one
        ("host:65535", "0.0.0.0", ("host", 65535)),
        ("[::1]:80", "0.0.0.0", ("::1", 80)),
        ("[::]:0", "0.0.0.0", ("::", 0)),
        ("::1", "0.0.0.0", ("::1", 7370)),  # a bare IPv6 address has no port
        ("fe80::1", "0.0.0.0", ("fe80::1", 7370)),
        ("::", "0.0.0.0", ("::", 7370)),
    ],
)
def test_parse_hostport(text: str, default_host: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, 7370, default_host=default_host) == expected


@pytest.mark.parametrize(
    "text",
    [
        "host:",
        "host:65536",
        "host:-1",
        "host:http",
        "host: 80",
        "my host:80",
        "[::1]:x",
        "host:\u00b2",
        "host:1e3",
    ],
)
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(text, 7370)


def test_parse_hostport_bracketed_ipv6_without_port() -> None:
    assert parse_hostport("[::1]", 7370) == ("::1", 7370)


@pytest.mark.parametrize("text", ["[::1", "[::1:80", "[host:80", "host]:80"])
def test_parse_hostport_rejects_unbalanced_brackets(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(text, 7370)
