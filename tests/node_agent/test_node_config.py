"""node_agent/config.py: flags over node.toml over defaults, and what each setting accepts."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from node_agent.config import (
    DEFAULT_PORT,
    FILE_KEYS,
    NodeConfig,
    default_state_dir,
    load_config,
    parse_labels,
    parse_listen,
)
from node_agent.errors import ConfigError
from node_agent.facts import NetworkRule
from tests.docs import documented_keys


def _write(state: Path, text: str) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "node.toml").write_text(text)


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, name="n1")
    assert cfg == NodeConfig(state_dir=tmp_path, name="n1")
    assert (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", DEFAULT_PORT)
    assert (cfg.network, cfg.network_rules, cfg.labels) == ("", (), {})
    assert (cfg.slots, cfg.heartbeat_s, cfg.mdns) == (1, 1.0, True)
    assert cfg.output_cap_mb == 4.0


def test_default_name_is_the_short_hostname(tmp_path: Path) -> None:
    expected = socket.gethostname().split(".")[0] or "node"
    assert load_config(tmp_path).name == expected


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLOTA_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "node"
    monkeypatch.delenv("FLOTA_HOME")
    assert default_state_dir() == Path.home() / ".flota" / "node"


FILE = """
name = "from-file"
listen = "10.0.0.2:7000"
network = "home"
network_rules = ["corp=if:wg*", "lab=subnet:10.0.0.0/8"]
slots = 4
heartbeat_s = 2.5
mdns = false

[labels]
gpu = "a100"
zone = "eu"
"""


def test_file_is_read(tmp_path: Path) -> None:
    _write(tmp_path, FILE)
    cfg = load_config(tmp_path)
    assert cfg.name == "from-file"
    assert (cfg.listen_host, cfg.listen_port) == ("10.0.0.2", 7000)
    assert cfg.network == "home"
    assert cfg.network_rules == (
        NetworkRule("corp", interface="wg*"),
        NetworkRule("lab", subnet="10.0.0.0/8"),
    )
    assert cfg.labels == {"gpu": "a100", "zone": "eu"}
    assert (cfg.slots, cfg.heartbeat_s, cfg.mdns) == (4, 2.5, False)


def test_flags_override_the_file(tmp_path: Path) -> None:
    _write(tmp_path, FILE)
    cfg = load_config(
        tmp_path,
        name="from-flag",
        listen="[::1]:0",
        network="office",
        network_rules=["vpn=if:tun*"],
        labels=["zone=us", "disk=ssd"],
        slots=8,
        heartbeat_s=0.5,
        mdns=True,
    )
    assert cfg.name == "from-flag"
    assert (cfg.listen_host, cfg.listen_port) == ("::1", 0)
    assert cfg.network == "office"
    assert cfg.network_rules == (NetworkRule("vpn", interface="tun*"),)
    assert cfg.labels == {"gpu": "a100", "zone": "us", "disk": "ssd"}  # merged, flags win per key
    assert (cfg.slots, cfg.heartbeat_s, cfg.mdns) == (8, 0.5, True)


def test_empty_network_flag_undeclares_the_file(tmp_path: Path) -> None:
    _write(tmp_path, 'network = "home"')
    assert load_config(tmp_path, name="n1", network="").network == ""


@pytest.mark.parametrize(
    ("kwargs", "file", "message"),
    [
        # names
        pytest.param({"name": "-lead"}, "", "invalid node name", id="name-leading-dash"),
        pytest.param({"name": ".hidden"}, "", "invalid node name", id="name-leading-dot"),
        pytest.param({"name": "has space"}, "", "invalid node name", id="name-space"),
        pytest.param({"name": "a/b"}, "", "invalid node name", id="name-slash"),
        pytest.param({"name": "a" * 64}, "", "invalid node name", id="name-too-long"),
        pytest.param({}, 'name = "bad name"', "invalid node name", id="name-from-file"),
        # labels
        pytest.param({"labels": ["novalue"]}, "", "invalid label", id="label-no-equals"),
        pytest.param({"labels": ["=v"]}, "", "invalid label", id="label-empty-key"),
        pytest.param({"labels": ["-k=v"]}, "", "invalid label", id="label-key-leading-dash"),
        pytest.param({"labels": ["k=has space"]}, "", "invalid label", id="label-value-space"),
        pytest.param({"labels": ["k=" + "v" * 64]}, "", "invalid label", id="label-value-too-long"),
        pytest.param({}, '[labels]\n"bad key" = "v"', "invalid label", id="label-from-file"),
        # slots
        pytest.param({"slots": 0}, "", "invalid slots 0", id="slots-zero"),
        pytest.param({"slots": 257}, "", "invalid slots 257", id="slots-too-many"),
        pytest.param({}, "slots = -1", "invalid slots -1", id="slots-from-file"),
        # heartbeat
        pytest.param({"heartbeat_s": 0.05}, "", "heartbeat", id="heartbeat-too-fast"),
        pytest.param({"heartbeat_s": 61.0}, "", "heartbeat", id="heartbeat-too-slow"),
        pytest.param({"heartbeat_s": float("nan")}, "", "heartbeat", id="heartbeat-nan"),
        pytest.param({}, "heartbeat_s = 0", "heartbeat", id="heartbeat-from-file"),
        # network profile and rules
        pytest.param({"network": "Home"}, "", "invalid network profile", id="profile-uppercase"),
        pytest.param({"network": "a b"}, "", "invalid network profile", id="profile-space"),
        pytest.param({"network": "x" * 33}, "", "invalid network profile", id="profile-too-long"),
        pytest.param({}, 'network = "bad/profile"', "invalid network profile", id="profile-from-file"),
        pytest.param({"network_rules": ["vpn"]}, "", "invalid network rule", id="rule-malformed"),
        pytest.param({}, 'network_rules = ["x=subnet:nope"]', "invalid subnet", id="rule-from-file"),
        # listen
        pytest.param({"listen": "host:99999"}, "", "invalid listen address", id="listen-port-range"),
        pytest.param({}, 'listen = "host:http"', "invalid listen address", id="listen-from-file"),
        # output kept while no coordinator takes it
        pytest.param({}, "output_cap_mb = 0.5", "invalid output_cap_mb 0.5", id="output-cap-too-small"),
        pytest.param({}, "output_cap_mb = 2048", "invalid output_cap_mb 2048", id="output-cap-too-big"),
        pytest.param({}, 'output_cap_mb = "lots"', "invalid value", id="output-cap-not-a-number"),
        # the file itself
        pytest.param({}, "name = ", "cannot read", id="malformed-toml"),
        pytest.param({}, "[labels\n", "cannot read", id="malformed-table"),
    ],
)
def test_invalid_settings(tmp_path: Path, kwargs: dict[str, Any], file: str, message: str) -> None:
    if file:
        _write(tmp_path, file)
    if "name" not in kwargs and "name" not in file:
        kwargs["name"] = "n1"
    with pytest.raises(ConfigError, match=message) as info:
        load_config(tmp_path, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "attr", "value"),
    [
        ({"name": "a"}, "name", "a"),
        ({"name": "A.b_c-9"}, "name", "A.b_c-9"),
        ({"name": "a" * 63}, "name", "a" * 63),
        ({"slots": 1}, "slots", 1),
        ({"slots": 256}, "slots", 256),
        ({"heartbeat_s": 0.1}, "heartbeat_s", 0.1),
        ({"heartbeat_s": 60.0}, "heartbeat_s", 60.0),
        ({"labels": ["k=", "team/x=a:b"]}, "labels", {"k": "", "team/x": "a:b"}),
        ({"network": "my-net.2_b"}, "network", "my-net.2_b"),
    ],
)
def test_boundary_values_accepted(tmp_path: Path, kwargs: dict[str, Any], attr: str, value: object) -> None:
    kwargs.setdefault("name", "n1")
    assert getattr(load_config(tmp_path, **kwargs), attr) == value


def test_name_with_trailing_newline_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid node name"):
        load_config(tmp_path, name="n1\n")


def test_label_values_from_the_file_are_strings(tmp_path: Path) -> None:
    _write(tmp_path, "[labels]\ngpus = 2\n")
    try:
        labels = load_config(tmp_path, name="n1").labels
    except ConfigError:
        return  # refusing it is fine too
    assert labels == {"gpus": "2"}


def test_wrongly_typed_value_is_a_config_error(tmp_path: Path) -> None:
    _write(tmp_path, 'slots = "many"')
    with pytest.raises(ConfigError):
        load_config(tmp_path, name="n1")


# --- parse_listen and parse_labels ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.2:7000", ("10.0.0.2", 7000)),
        ("10.0.0.2", ("10.0.0.2", DEFAULT_PORT)),
        (":7000", ("0.0.0.0", 7000)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::]:7000", ("::", 7000)),
        ("[fd00::2]:65535", ("fd00::2", 65535)),
        ("::", ("::", DEFAULT_PORT)),
        ("node.local:1", ("node.local", 1)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text, DEFAULT_PORT) == expected


@pytest.mark.parametrize("text", ["host:", "host:65536", "host:-1", "host:x", "a b:1"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid listen address"):
        parse_listen(text, DEFAULT_PORT)


def test_parse_labels_last_one_wins() -> None:
    assert parse_labels(["a=1", "b=2", "a=3"]) == {"a": "3", "b": "2"}
    assert parse_labels([]) == {}


def test_parse_labels_splits_at_the_first_equals_sign() -> None:
    with pytest.raises(ConfigError, match="invalid label 'url=a=b'"):
        parse_labels(["url=a=b"])  # '=' is not a label value character


def test_a_key_node_toml_does_not_know_is_refused_by_name(tmp_path: Path) -> None:
    _write(tmp_path, "slot = 2\n")  # a typo of slots: never silently ignored
    with pytest.raises(ConfigError, match=r"unknown setting 'slot' in .*node.toml \(known: .*slots"):
        load_config(tmp_path, name="n1")


def test_docs_list_exactly_the_keys_node_toml_takes() -> None:
    """docs/cli.md's node.toml table is the list users read: it must be the list the code takes."""
    assert documented_keys("node.toml") == FILE_KEYS


@pytest.mark.parametrize("text", ["output_cap_mb = 1", "output_cap_mb = 1024", "output_cap_mb = 16.5"])
def test_output_cap_from_the_file(tmp_path: Path, text: str) -> None:
    _write(tmp_path, text)
    assert load_config(tmp_path, name="n1").output_cap_mb == float(text.split("= ")[1])


# --- a model server's slots, the llm agent host -------------------------------------------

LMS = "http://127.0.0.1:1234/v1"
OTHER = "http://127.0.0.1:8080/v1"


def test_model_slots_pair_with_the_servers_in_order(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, name="n", model_servers=[LMS, OTHER], model_slots=[4])
    assert cfg.model_slots == {"http://127.0.0.1:1234": 4}  # the second server: its own word
    _write(tmp_path, f'model_slots = {{ "{OTHER}" = 2, "http://127.0.0.1:11434" = 3 }}\n')
    cfg = load_config(tmp_path, name="n")
    assert cfg.model_slots == {"http://127.0.0.1:8080": 2, "http://127.0.0.1:11434": 3}
    assert load_config(tmp_path, name="n", model_servers=[LMS], model_slots=[1]).model_slots == {
        "http://127.0.0.1:1234": 1
    }  # the flags win


@pytest.mark.parametrize(
    ("flags", "toml", "message"),
    [
        ({"model_servers": [LMS], "model_slots": [0]}, "", "invalid model slots 0 for"),
        ({"model_servers": [LMS], "model_slots": [257]}, "", "invalid model slots 257"),
        ({"model_slots": [2]}, "", "--model-slots given 1 times for 0 --model-server"),
        ({}, 'model_slots = { "http://10.0.0.1:1234/v1" = 2 }\n', "a loopback http:// URL"),
        ({}, 'model_slots = { "http://127.0.0.1:1234/v1" = "two" }\n', "invalid model slots 'two'"),
        ({}, "model_slots = 4\n", "model_slots must be a table of URL = slots"),
        ({}, "warm_agents = 1\n", "warm_agents must be true or false"),
        ({}, 'agent_idle_s = "x"\n', "agent_idle_s"),
        ({"agent_idle_s": -1.0}, "", "invalid agent idle time -1"),
    ],
)
def test_bad_model_slots_and_agent_settings(
    tmp_path: Path, flags: dict[str, Any], toml: str, message: str
) -> None:
    _write(tmp_path, toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path, name="n", **flags)


def test_agent_host_settings(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, name="n")
    assert (cfg.warm_agents, cfg.agent_idle_s) == (False, 600.0)
    _write(tmp_path, "warm_agents = true\nagent_idle_s = 30\n")
    cfg = load_config(tmp_path, name="n")
    assert (cfg.warm_agents, cfg.agent_idle_s) == (True, 30.0)
    assert load_config(tmp_path, name="n", agent_idle_s=0.0).agent_idle_s == 0.0
