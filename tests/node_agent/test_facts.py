"""node_agent/facts.py: the network profile, listen addresses and host facts.

Interfaces are passed in as plain mappings (the seam `interfaces()` feeds in production),
so every case is a table row and nothing depends on this machine's network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.errors import ConfigError
from node_agent.facts import (
    AGENT_CLIS,
    Facts,
    NetworkRule,
    derive_network,
    interfaces,
    listen_addresses,
    parse_rule,
    read_facts,
)

LO = {"lo": ["127.0.0.1", "::1"]}
LAN = {**LO, "eth0": ["192.168.1.20", "fe80::1"]}

# --- derive_network -------------------------------------------------------------------------

HOME = NetworkRule("home", subnet="192.168.1.0/24")
OFFICE = NetworkRule("office", subnet="10.20.0.0/16")
VPN_RULE = NetworkRule("corp", interface="wg*")
V6_RULE = NetworkRule("v6home", subnet="fd00:1::/64")


@pytest.mark.parametrize(
    ("declared", "rules", "ifaces", "expected"),
    [
        # declared wins over everything
        pytest.param("studio", (HOME,), LAN, ("studio", "declared"), id="declared-over-rule"),
        pytest.param("studio", (), {"wg0": ["10.9.0.2"]}, ("studio", "declared"), id="declared-over-auto"),
        # rules, first match wins, numbered from 1
        pytest.param("", (HOME,), LAN, ("home", "rule:1"), id="subnet-rule"),
        pytest.param("", (OFFICE, HOME), LAN, ("home", "rule:2"), id="second-rule-matches"),
        pytest.param(
            "", (HOME, NetworkRule("lan2", subnet="192.168.0.0/16")), LAN, ("home", "rule:1"), id="first-wins"
        ),
        pytest.param("", (VPN_RULE, HOME), {**LAN, "wg0": []}, ("corp", "rule:1"), id="if-glob-rule"),
        pytest.param(
            "",
            (NetworkRule("dock", interface="en?"),),
            {"en0": ["10.0.0.2"]},
            ("dock", "rule:1"),
            id="if-glob-?",
        ),
        pytest.param("", (V6_RULE,), {"eth0": ["fd00:1::5"]}, ("v6home", "rule:1"), id="ipv6-subnet-rule"),
        pytest.param(
            "", (V6_RULE,), {"eth0": ["192.168.1.2"]}, ("lan", "auto"), id="ipv6-rule-ignores-ipv4-addresses"
        ),
        pytest.param("", (OFFICE,), LAN, ("lan", "auto"), id="no-rule-matches"),
        pytest.param(
            "",
            (NetworkRule("loopy", subnet="127.0.0.0/8"),),
            LO,
            ("loopy", "rule:1"),
            id="rule-sees-loopback",
        ),
        # auto: a VPN device
        pytest.param("", (), {**LAN, "wg0": ["10.9.0.2"]}, ("vpn", "auto"), id="auto-wg0"),
        pytest.param("", (), {**LAN, "tun0": []}, ("vpn", "auto"), id="auto-tun0"),
        pytest.param("", (), {"lo0": ["127.0.0.1"], "utun3": ["fd7a::1"]}, ("vpn", "auto"), id="auto-utun3"),
        pytest.param("", (), {"tailscale0": ["100.64.1.2"]}, ("vpn", "auto"), id="auto-tailscale"),
        pytest.param("", (), {"eth0": ["8.8.8.8"], "ppp0": []}, ("vpn", "auto"), id="vpn-over-public"),
        # auto: private only -> lan
        pytest.param("", (), LAN, ("lan", "auto"), id="auto-lan"),
        pytest.param("", (), {"eth0": ["10.1.2.3"], "eth1": ["172.16.0.9"]}, ("lan", "auto"), id="lan-two"),
        pytest.param("", (), {"eth0": ["fd12:3456::1"]}, ("lan", "auto"), id="lan-ula-v6"),
        # auto: any public address -> public
        pytest.param("", (), {**LO, "eth0": ["8.8.4.4"]}, ("public", "auto"), id="auto-public"),
        pytest.param(
            "",
            (),
            {"eth0": ["192.168.1.2"], "eth1": ["1.1.1.1"]},
            ("public", "auto"),
            id="public-and-private",
        ),
        pytest.param("", (), {"eth0": ["2001:4860:4860::8888"]}, ("public", "auto"), id="public-v6"),
        # nothing routable -> offline
        pytest.param("", (), LO, ("offline", "auto"), id="only-loopback"),
        pytest.param("", (), {"lo0": ["127.0.0.1", "::1"]}, ("offline", "auto"), id="only-loopback-macos"),
        pytest.param("", (), {}, ("offline", "auto"), id="no-interfaces"),
        pytest.param("", (), {**LO, "eth0": []}, ("offline", "auto"), id="interface-without-address"),
        pytest.param("", (), {"eth0": ["169.254.3.4", "fe80::2"]}, ("offline", "auto"), id="only-link-local"),
    ],
)
def test_derive_network(
    declared: str,
    rules: tuple[NetworkRule, ...],
    ifaces: dict[str, list[str]],
    expected: tuple[str, str],
) -> None:
    assert derive_network(declared, rules, ifaces) == expected


# --- parse_rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("vpn=if:wg*", NetworkRule("vpn", interface="wg*")),
        ("home=subnet:192.168.1.0/24", NetworkRule("home", subnet="192.168.1.0/24")),
        ("home=subnet:192.168.1.7/24", NetworkRule("home", subnet="192.168.1.7/24")),  # host bits allowed
        ("v6=subnet:fd00::/8", NetworkRule("v6", subnet="fd00::/8")),
        ("one=subnet:10.0.0.1", NetworkRule("one", subnet="10.0.0.1")),
        ("a.b-c_d=if:en[0-9]", NetworkRule("a.b-c_d", interface="en[0-9]")),
        ("x=if:a:b", NetworkRule("x", interface="a:b")),  # only the first ':' separates the kind
    ],
)
def test_parse_rule(text: str, rule: NetworkRule) -> None:
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid network rule"),
        ("vpn", "invalid network rule"),
        ("vpn=wg*", "invalid network rule"),
        ("vpn=if:", "invalid network rule"),
        ("vpn=iface:wg*", "invalid network rule"),
        ("vpn=IF:wg*", "invalid network rule"),
        ("home=subnet:not-a-net", "invalid subnet"),
        ("home=subnet:192.168.1.0/33", "invalid subnet"),
        ("=if:wg*", "invalid network profile"),
        ("VPN=if:wg*", "invalid network profile"),
        ("my vpn=if:wg*", "invalid network profile"),
        ("a" * 33 + "=if:wg*", "invalid network profile"),
    ],
)
def test_parse_rule_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_rule(text)
    assert "\n" not in str(info.value)


def test_parsed_rules_drive_derive_network() -> None:
    rules = (parse_rule("corp=if:wg*"), parse_rule("home=subnet:192.168.1.0/24"))
    assert derive_network("", rules, LAN) == ("home", "rule:2")
    assert derive_network("", rules, {**LAN, "wg0": ["10.9.0.2"]}) == ("corp", "rule:1")


# --- listen_addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "ifaces", "expected"),
    [
        pytest.param("192.168.1.20", LAN, ["192.168.1.20:7380"], id="specific-host"),
        pytest.param("127.0.0.1", LAN, ["127.0.0.1:7380"], id="specific-loopback"),
        pytest.param("node.example", {}, ["node.example:7380"], id="specific-name"),
        pytest.param("0.0.0.0", LAN, ["192.168.1.20:7380"], id="wildcard-skips-loopback-and-v6"),
        pytest.param("", LAN, ["192.168.1.20:7380"], id="empty-is-wildcard"),
        pytest.param("::", LAN, ["192.168.1.20:7380"], id="v6-wildcard"),
        pytest.param(
            "0.0.0.0",
            {**LO, "eth1": ["10.0.0.9"], "eth0": ["192.168.1.20"], "wg0": ["10.9.0.2"]},
            ["10.0.0.9:7380", "10.9.0.2:7380", "192.168.1.20:7380"],
            id="wildcard-every-ipv4-sorted",
        ),
        pytest.param("0.0.0.0", {"eth0": ["169.254.1.1"]}, ["127.0.0.1:7380"], id="link-local-skipped"),
        pytest.param("0.0.0.0", LO, ["127.0.0.1:7380"], id="only-loopback-falls-back"),
        pytest.param("0.0.0.0", {}, ["127.0.0.1:7380"], id="nothing-falls-back"),
        pytest.param("0.0.0.0", {"eth0": ["fd00::1"]}, ["127.0.0.1:7380"], id="only-v6-falls-back"),
    ],
)
def test_listen_addresses(host: str, ifaces: dict[str, list[str]], expected: list[str]) -> None:
    assert listen_addresses(host, 7380, ifaces) == expected


def test_listen_addresses_brackets_an_ipv6_host() -> None:
    assert listen_addresses("fd00::5", 7380, {}) == ["[fd00::5]:7380"]


# --- this machine ---------------------------------------------------------------------------


def test_read_facts_on_this_machine(tmp_path: Path) -> None:
    facts = read_facts(str(tmp_path), ())
    assert isinstance(facts, Facts)
    assert facts.cpu_count >= 1
    assert facts.load_1m >= 0
    assert facts.memory_total_mb > 0
    assert 0 <= facts.memory_available_mb <= facts.memory_total_mb
    assert facts.disk_free_mb > 0
    assert facts.battery_percent == -1 or 0 <= facts.battery_percent <= 100
    if facts.battery_percent == -1:
        assert facts.on_battery is False
    assert facts.gpus == ()
    assert set(facts.agent_clis) <= set(AGENT_CLIS)
    assert facts.os and facts.os == facts.os.lower()
    assert facts.arch
    assert facts.hostname


def test_read_facts_on_a_missing_disk_path(tmp_path: Path) -> None:
    assert read_facts(str(tmp_path / "missing"), ()).disk_free_mb == 0


def test_interfaces_on_this_machine() -> None:
    found = interfaces()
    assert found, "at least loopback is up"
    for name, ips in found.items():
        assert isinstance(name, str)
        assert all("%" not in ip for ip in ips)  # scope ids are stripped
    # Whatever this machine has, the profile derived from it is one of the auto ones.
    assert derive_network("", (), found)[1] == "auto"
