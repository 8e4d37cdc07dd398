"""coordinator/config.py: flags over coordinator.toml over defaults, and address parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.config import FILE_KEYS, CoordinatorConfig, flota_home, load_config, parse_hostport
from coordinator.errors import ConfigError
from coordinator.fleet import protocol_problem
from protos.contract import OLDEST_PROTOCOL, PROTOCOL
from tests.docs import documented_keys


def _write(home: Path, text: str) -> None:
    state = home / "coordinator"
    state.mkdir(parents=True, exist_ok=True)
    (state / "coordinator.toml").write_text(text)


def test_defaults_without_a_file(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    assert cfg == CoordinatorConfig(state_dir=tmp_path / "coordinator", admin_dir=tmp_path / "admin")
    assert (cfg.listen_host, cfg.listen_port, cfg.join_port) == ("0.0.0.0", 7370, 7371)
    assert cfg.mdns is True
    assert cfg.static_nodes == ()
    assert (cfg.unreachable_after_s, cfg.lost_after_s) == (3.0, 30.0)
    assert cfg.advertise == ""


def test_home_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLOTA_HOME", str(tmp_path / "h"))
    assert flota_home() == tmp_path / "h"
    assert load_config().state_dir == tmp_path / "h" / "coordinator"


def test_file_is_read(tmp_path: Path) -> None:
    _write(
        tmp_path,
        """
listen = "127.0.0.1:9000"
join_port = 9100
advertise = "coord.example"
mdns = false
lost_after_s = 60
unreachable_after_s = 5
nodes = ["abcd1234@10.0.0.5:7380", "ffff0000ffff@[fd00::5]:7380"]
""",
    )
    cfg = load_config(tmp_path)
    assert (cfg.listen_host, cfg.listen_port, cfg.join_port) == ("127.0.0.1", 9000, 9100)
    assert cfg.advertise == "coord.example"
    assert cfg.mdns is False
    assert (cfg.unreachable_after_s, cfg.lost_after_s) == (5.0, 60.0)
    assert cfg.static_nodes == (("abcd1234", "10.0.0.5:7380"), ("ffff0000ffff", "[fd00::5]:7380"))


def test_flags_override_the_file(tmp_path: Path) -> None:
    _write(
        tmp_path,
        'listen = "127.0.0.1:9000"\njoin_port = 9100\nadvertise = "file"\nmdns = false\n'
        "lost_after_s = 60\nunreachable_after_s = 5\n",
    )
    cfg = load_config(
        tmp_path,
        listen="10.1.1.1:8000",
        join_listen_port=8500,
        advertise="flag",
        mdns=True,
        lost_after_s=20.0,
        unreachable_after_s=2.0,
    )
    assert (cfg.listen_host, cfg.listen_port, cfg.join_port) == ("10.1.1.1", 8000, 8500)
    assert cfg.advertise == "flag"
    assert cfg.mdns is True
    assert (cfg.unreachable_after_s, cfg.lost_after_s) == (2.0, 20.0)


@pytest.mark.parametrize(
    ("kwargs", "file", "join_port"),
    [
        pytest.param({"listen": "127.0.0.1:9000"}, "", 9001, id="next-to-listen-flag"),
        pytest.param({}, 'listen = ":9000"', 9001, id="next-to-listen-file"),
        pytest.param({"listen": "127.0.0.1:0"}, "", 0, id="listen-port-0-picks-free-join-port"),
        pytest.param({"listen": "127.0.0.1:9000"}, "join_port = 42", 42, id="file-join-port"),
        pytest.param({"join_listen_port": 0}, "join_port = 42", 0, id="flag-zero-overrides-file"),
    ],
)
def test_join_port(tmp_path: Path, kwargs: dict[str, Any], file: str, join_port: int) -> None:
    _write(tmp_path, file)
    assert load_config(tmp_path, **kwargs).join_port == join_port


@pytest.mark.parametrize(
    ("kwargs", "file"),
    [
        pytest.param(
            {"unreachable_after_s": 10.0, "lost_after_s": 5.0}, "", id="unreachable-over-lost-flags"
        ),
        pytest.param({}, "unreachable_after_s = 40", id="unreachable-over-default-lost"),
        pytest.param({}, "lost_after_s = 1\n", id="lost-under-default-unreachable"),
        pytest.param({"unreachable_after_s": 0.4}, "", id="unreachable-too-small"),
        pytest.param({"unreachable_after_s": float("nan")}, "", id="unreachable-nan"),
    ],
)
def test_invalid_timeouts(tmp_path: Path, kwargs: dict[str, Any], file: str) -> None:
    _write(tmp_path, file)
    with pytest.raises(ConfigError, match="unreachable-after <= lost-after"):
        load_config(tmp_path, **kwargs)


def test_unreachable_equal_to_lost_is_allowed(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, unreachable_after_s=5.0, lost_after_s=5.0)
    assert cfg.unreachable_after_s == cfg.lost_after_s == 5.0


@pytest.mark.parametrize(
    "item",
    [
        pytest.param("10.0.0.5:7380", id="no-id"),
        pytest.param("@10.0.0.5:7380", id="empty-id"),
        pytest.param("short@10.0.0.5:7380", id="id-too-short"),
        pytest.param("ABCD1234@10.0.0.5:7380", id="id-uppercase"),
        pytest.param("abcd-1234@10.0.0.5:7380", id="id-dash"),
    ],
)
def test_invalid_static_node_id(tmp_path: Path, item: str) -> None:
    _write(tmp_path, f"nodes = [{item!r}]".replace("'", '"'))
    with pytest.raises(ConfigError, match="invalid static node") as info:
        load_config(tmp_path)
    assert "ID@HOST:PORT" in str(info.value)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("addr", ["10.0.0.5:99999", "10.0.0.5:port", "10.0.0.5:", "10.0.0.5:-1"])
def test_invalid_static_node_address(tmp_path: Path, addr: str) -> None:
    _write(tmp_path, f'nodes = ["abcd1234@{addr}"]')
    with pytest.raises(ConfigError, match="invalid address"):
        load_config(tmp_path)


def test_static_node_needs_a_port(tmp_path: Path) -> None:
    _write(tmp_path, 'nodes = ["abcd1234@10.0.0.5"]')
    with pytest.raises(ConfigError):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('listen = "unterminated', id="unterminated-string"),
        pytest.param("listen = ", id="missing-value"),
        pytest.param("[[[", id="bad-table"),
        pytest.param("a = 1\na = 2", id="duplicate-key"),
    ],
)
def test_malformed_toml(tmp_path: Path, text: str) -> None:
    _write(tmp_path, text)
    with pytest.raises(ConfigError, match="cannot read .*coordinator.toml") as info:
        load_config(tmp_path)
    assert "\n" not in str(info.value)


def test_invalid_listen_in_file(tmp_path: Path) -> None:
    _write(tmp_path, 'listen = "0.0.0.0:70000"')
    with pytest.raises(ConfigError, match="invalid address '0.0.0.0:70000'"):
        load_config(tmp_path)


def test_wrongly_typed_value_is_a_config_error(tmp_path: Path) -> None:
    _write(tmp_path, 'join_port = "next"')
    with pytest.raises(ConfigError):
        load_config(tmp_path)


# --- parse_hostport -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("host.example:8080", ("host.example", 8080)),
        ("host.example", ("host.example", 7370)),  # no port: the default
        (":9000", ("0.0.0.0", 9000)),  # no host: every interface
        ("", ("0.0.0.0", 7370)),
        ("[::1]:80", ("::1", 80)),
        ("[::]:0", ("::", 0)),
        ("[fe80::1]:65535", ("fe80::1", 65535)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),  # port 0: the OS picks a free one
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, 7370) == expected


@pytest.mark.parametrize(
    "text",
    ["host:", "host:65536", "host:-1", "host:http", "host: 80", "[::1]:x", "my host:80", "host:\u00b2"],
)
def test_parse_hostport_rejects_with_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="port 0 picks a free one") as info:
        parse_hostport(text, 7370)
    assert "\n" not in str(info.value)


def test_a_key_coordinator_toml_does_not_know_is_refused_by_name(tmp_path: Path) -> None:
    _write(tmp_path, "push_timeout = 30\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'push_timeout' in .*coordinator.toml"):
        load_config(tmp_path)


def test_docs_list_exactly_the_keys_coordinator_toml_takes() -> None:
    assert documented_keys("coordinator.toml") == FILE_KEYS


@pytest.mark.parametrize(
    ("sent", "taken"),
    [(0, OLDEST_PROTOCOL == 1), (OLDEST_PROTOCOL, True), (PROTOCOL, True), (PROTOCOL + 1, False)],
)
def test_the_protocol_window(sent: int, taken: bool) -> None:
    problem = protocol_problem("laptop", sent, "9.9.9")
    assert (problem == "") is taken
    if not taken:
        assert problem.startswith("node laptop (flota 9.9.9) speaks protocol")
        assert ("upgrade the coordinator" in problem) is (sent > PROTOCOL)
