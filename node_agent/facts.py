"""Host facts and the network profile.

Facts are cheap to read (psutil) except GPUs, which are probed once at start.
The network profile is declared (`--network home`) or derived by rules from what the
host sees; `watch` re-derives it so that a VPN coming up reaches the coordinator.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

from node_agent.errors import ConfigError
from protos.limits import PROFILE_RE

__all__ = [
    "AGENT_CLIS",
    "Facts",
    "Gpu",
    "NetworkRule",
    "derive_network",
    "interfaces",
    "listen_addresses",
    "parse_rule",
    "probe_gpus",
    "read_facts",
]

# Agent CLIs a node looks for on PATH.
AGENT_CLIS = ("claude", "aider", "codex", "gemini", "architect")
# Interface names that mean "a VPN is up".
VPN_PATTERNS = ("tun*", "tap*", "wg*", "ppp*", "utun*", "tailscale*", "zt*", "nordlynx*", "ipsec*")


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    memory_mb: int


@dataclass(frozen=True, slots=True)
class Facts:
    cpu_count: int
    load_1m: float
    memory_total_mb: int
    memory_available_mb: int
    gpus: tuple[Gpu, ...]
    disk_free_mb: int
    on_battery: bool
    battery_percent: int
    agent_clis: tuple[str, ...]
    os: str
    arch: str
    hostname: str


def probe_gpus() -> tuple[Gpu, ...]:
    """NVIDIA GPUs through nvidia-smi when it exists; nothing otherwise."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.splitlines():
        name, _, mem = line.rpartition(",")
        if name.strip():
            gpus.append(Gpu(name.strip(), int(mem.strip()) if mem.strip().isdigit() else 0))
    return tuple(gpus)


def read_facts(disk_path: str, gpus: tuple[Gpu, ...], extra_clis: tuple[str, ...] = ()) -> Facts:
    vm = psutil.virtual_memory()
    try:
        disk_free = psutil.disk_usage(disk_path).free
    except OSError:
        disk_free = 0
    try:
        battery = psutil.sensors_battery()
    except (OSError, AttributeError):
        battery = None
    return Facts(
        cpu_count=os.cpu_count() or 1,
        load_1m=os.getloadavg()[0],
        memory_total_mb=vm.total // 2**20,
        memory_available_mb=vm.available // 2**20,
        gpus=gpus,
        disk_free_mb=disk_free // 2**20,
        on_battery=bool(battery and not battery.power_plugged),
        battery_percent=int(battery.percent) if battery else -1,
        agent_clis=tuple(c for c in dict.fromkeys([*AGENT_CLIS, *extra_clis]) if shutil.which(c)),
        os=platform.system().lower(),
        arch=platform.machine(),
        hostname=socket.gethostname(),
    )


def interfaces() -> dict[str, list[str]]:
    """Administratively up interfaces and their IP addresses (v4 and v6, without scope).

    "Up" is the interface flag, not carrier: a VPN tunnel can be configured and up
    while it reports no carrier."""
    stats = psutil.net_if_stats()
    result: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and "up" not in stats[name].flags.split(","):
            continue
        ips = [a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
        result[name] = ips
    return result


def listen_addresses(host: str, port: int, ifaces: Mapping[str, list[str]]) -> list[str]:
    """host:port pairs the coordinator may dial. A wildcard listener offers every IPv4
    address but loopback (on another host, 127.0.0.1 is someone else)."""
    if host not in ("0.0.0.0", "", "::"):
        return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    found = []
    for ips in ifaces.values():
        for ip in ips:
            addr = ipaddress.ip_address(ip)
            if addr.version == 4 and not addr.is_loopback and not addr.is_link_local:
                found.append(f"{ip}:{port}")
    return sorted(found) or [f"127.0.0.1:{port}"]


@dataclass(frozen=True, slots=True)
class NetworkRule:
    """`profile` applies when an up interface matches `interface` (a glob) or an address
    lies in `subnet`."""

    profile: str
    interface: str = ""
    subnet: str = ""

    def matches(self, ifaces: Mapping[str, list[str]]) -> bool:
        if self.interface:
            return any(fnmatch.fnmatch(name, self.interface) for name in ifaces)
        net = ipaddress.ip_network(self.subnet, strict=False)
        return any(ipaddress.ip_address(ip) in net for ips in ifaces.values() for ip in ips)


def check_profile(name: str) -> str:
    if not PROFILE_RE.match(name):
        raise ConfigError(f"invalid network profile {name!r} (lowercase letters, digits, - _ .)")
    return name


def parse_rule(text: str) -> NetworkRule:
    """`PROFILE=if:GLOB` or `PROFILE=subnet:CIDR`, e.g. `vpn=if:wg*`, `home=subnet:192.168.1.0/24`."""
    profile, sep, match = text.partition("=")
    kind, sep2, value = match.partition(":")
    if not sep or not sep2 or kind not in ("if", "subnet") or not value:
        raise ConfigError(f"invalid network rule {text!r} (expected PROFILE=if:GLOB or PROFILE=subnet:CIDR)")
    if kind == "subnet":
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ConfigError(f"invalid subnet in network rule {text!r}") from exc
        return NetworkRule(check_profile(profile), subnet=value)
    return NetworkRule(check_profile(profile), interface=value)


def derive_network(
    declared: str, rules: tuple[NetworkRule, ...], ifaces: Mapping[str, list[str]]
) -> tuple[str, str]:
    """(profile, source): declared wins, then the first matching rule, then a guess
    from what is up: a VPN device, a private address (lan), or else public."""
    if declared:
        return declared, "declared"
    for i, rule in enumerate(rules, 1):
        if rule.matches(ifaces):
            return rule.profile, f"rule:{i}"
    if any(fnmatch.fnmatch(name, pat) for name in ifaces for pat in VPN_PATTERNS):
        return "vpn", "auto"
    addrs = [ipaddress.ip_address(ip) for name, ips in ifaces.items() for ip in ips if name != "lo"]
    routable = [a for a in addrs if not a.is_loopback and not a.is_link_local]
    if routable and all(a.is_private for a in routable):
        return "lan", "auto"
    if routable:
        return "public", "auto"
    return "offline", "auto"
