"""Node daemon settings: flags first, then `<state>/node.toml`, then defaults."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from node_agent.errors import ConfigError
from node_agent.facts import NetworkRule, check_profile, parse_rule
from node_agent.local_models import server_key
from protos.contract import flota_home, parse_hostport
from protos.entry import read_settings
from protos.limits import LABEL_KEY_RE, LABEL_VALUE_RE, NAME_RE

__all__ = ["NodeConfig", "default_state_dir", "load_config", "parse_labels", "parse_listen"]

DEFAULT_PORT = 7380
# The keys node.toml may hold (docs/cli.md, "node.toml"); anything else is refused.
FILE_KEYS = frozenset(
    {
        "name",
        "listen",
        "network",
        "network_rules",
        "labels",
        "slots",
        "heartbeat_s",
        "mdns",
        "unreachable_after_s",
        "lost_after_s",
        "stop_after_disconnect_s",
        "allow_remotes",
        "model_servers",
        "agent_clis",
        "dial_home",
        "output_cap_mb",
        "model_slots",
        "warm_agents",
        "agent_idle_s",
    }
)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    state_dir: Path
    name: str
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    network: str = ""  # declared profile; empty: derived by rules
    network_rules: tuple[NetworkRule, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    slots: int = 1
    heartbeat_s: float = 1.0
    mdns: bool = True
    kill_grace_s: float = 5.0
    # Asked of the coordinator for this node (0: its defaults): a laptop that sleeps
    # may want a long grace before its jobs are given up.
    unreachable_after_s: float = 0.0
    lost_after_s: float = 0.0
    # Cut off from the coordinator this long, the node stops its jobs and pushes their
    # work in progress (status partial); 0: never.
    stop_after_disconnect_s: float = 600.0
    # Repository URLs (globs) this node fetches from and pushes to; empty: any.
    allow_remotes: tuple[str, ...] = ()
    # OpenAI-compatible model servers on this machine besides LM Studio and Ollama.
    model_servers: tuple[str, ...] = ()
    # Agent CLIs to report besides the known ones (for templates in flota.yaml), if on PATH.
    agent_clis: tuple[str, ...] = ()
    # Open the link to the coordinator ourselves (node_agent/home.py), announcing no
    # address to dial; without it the node still does once the coordinator cannot dial it.
    dial_home: bool = False
    # Output of one attempt kept on disk (and in memory) while no coordinator takes it:
    # the newest lines; older ones are dropped, counted and marked in the log.
    output_cap_mb: float = 4.0
    # Jobs at once per local model server (its api_base -> slots); a server not named
    # here: what it reports (llama.cpp's total_slots), else 1.
    model_slots: Mapping[str, int] = field(default_factory=dict)
    # The llm agent host (node_agent/agents/llm/host.py): started with the daemon, not at
    # the first llm job; it leaves after agent_idle_s without one (0: no host, each llm
    # job imports litellm itself).
    warm_agents: bool = False
    agent_idle_s: float = 600.0


def default_state_dir() -> Path:
    return flota_home() / "node"


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    try:
        return parse_hostport(text, default_port)
    except ValueError as exc:
        raise ConfigError(f"invalid listen address: {exc}; port 0 picks a free one") from exc


def parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(value):
            raise ConfigError(f"invalid label {item!r} (expected key=value: letters, digits, . _ - / :)")
        labels[key] = value
    return labels


def load_config(
    state_dir: Path,
    *,
    name: str | None = None,
    listen: str | None = None,
    network: str | None = None,
    network_rules: list[str] | None = None,
    labels: list[str] | None = None,
    slots: int | None = None,
    heartbeat_s: float | None = None,
    mdns: bool | None = None,
    unreachable_after_s: float | None = None,
    lost_after_s: float | None = None,
    stop_after_disconnect_s: float | None = None,
    allow_remotes: list[str] | None = None,
    model_servers: list[str] | None = None,
    agent_clis: list[str] | None = None,
    dial_home: bool | None = None,
    model_slots: list[int] | None = None,
    warm_agents: bool | None = None,
    agent_idle_s: float | None = None,
) -> NodeConfig:
    path = state_dir / "node.toml"
    try:
        file = read_settings(path, FILE_KEYS)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    name = name or file.get("name") or socket.gethostname().split(".")[0] or "node"
    if not NAME_RE.match(name):
        raise ConfigError(f"invalid node name {name!r} (letters, digits, . _ -; at most 63)")
    host, port = parse_listen(listen or str(file.get("listen", f"0.0.0.0:{DEFAULT_PORT}")), DEFAULT_PORT)
    declared = network if network is not None else str(file.get("network", ""))
    if declared:
        check_profile(declared)
    rules = tuple(parse_rule(r) for r in (network_rules or file.get("network_rules", [])))
    try:
        from_file = {str(k): str(v) for k, v in dict(file.get("labels", {})).items()}
        slots = slots if slots is not None else int(file.get("slots", 1))
        heartbeat = heartbeat_s if heartbeat_s is not None else float(file.get("heartbeat_s", 1.0))
        unreachable = (
            unreachable_after_s
            if unreachable_after_s is not None
            else float(file.get("unreachable_after_s", 0.0))
        )
        lost = lost_after_s if lost_after_s is not None else float(file.get("lost_after_s", 0.0))
        disconnect = (
            stop_after_disconnect_s
            if stop_after_disconnect_s is not None
            else float(file.get("stop_after_disconnect_s", 600.0))
        )
        output_cap = float(file.get("output_cap_mb", 4.0))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value in {path}: {exc}") from exc
    remotes = allow_remotes or [str(r) for r in file.get("allow_remotes", [])]
    if any(not r or "\0" in r or "\n" in r for r in remotes):
        raise ConfigError("invalid allow-remote pattern")
    servers = model_servers or [str(r) for r in file.get("model_servers", [])]
    for server in servers:
        _check_server(server)
    clis = agent_clis or [str(c) for c in file.get("agent_clis", [])]
    for cli in clis:
        if not NAME_RE.match(cli):
            raise ConfigError(f"invalid agent CLI name {cli!r}")
    home = dial_home if dial_home is not None else file.get("dial_home", False)
    warm = warm_agents if warm_agents is not None else file.get("warm_agents", False)
    for key, value in (("dial_home", home), ("warm_agents", warm)):
        if not isinstance(value, bool):
            raise ConfigError(f"invalid value in {path}: {key} must be true or false")
    capacities = _model_slots(path, servers, model_slots, file.get("model_slots", {}))
    try:
        idle = agent_idle_s if agent_idle_s is not None else float(file.get("agent_idle_s", 600.0))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value in {path}: agent_idle_s: {exc}") from exc
    if not 0 <= idle <= 7 * 86400:
        raise ConfigError(f"invalid agent idle time {idle:g} (0: no agent host, up to 7 days)")
    merged = parse_labels([f"{k}={v}" for k, v in from_file.items()])
    merged.update(parse_labels(labels or []))
    if not 1 <= slots <= 256:
        raise ConfigError(f"invalid slots {slots} (1 to 256)")
    if not 0.1 <= heartbeat <= 60:
        raise ConfigError("heartbeat must be between 0.1 and 60 seconds")
    if unreachable and not 0.5 <= unreachable <= 3600:
        raise ConfigError("unreachable-after must be between 0.5 and 3600 seconds (0: the coordinator's)")
    if lost and not 1 <= lost <= 7 * 86400:
        raise ConfigError("lost-after must be between 1 second and 7 days (0: the coordinator's)")
    if not 0 <= disconnect <= 7 * 86400:
        raise ConfigError("stop-after-disconnect must be between 0 (never) and 7 days")
    if not 1 <= output_cap <= 1024:
        raise ConfigError(f"invalid output_cap_mb {output_cap:g} in {path} (1 to 1024 MiB)")
    return NodeConfig(
        state_dir=state_dir,
        name=name,
        listen_host=host,
        listen_port=port,
        network=declared,
        network_rules=rules,
        labels=merged,
        slots=slots,
        heartbeat_s=heartbeat,
        mdns=mdns if mdns is not None else bool(file.get("mdns", True)),
        unreachable_after_s=unreachable,
        lost_after_s=lost,
        stop_after_disconnect_s=disconnect,
        allow_remotes=tuple(remotes),
        model_servers=tuple(servers),
        agent_clis=tuple(clis),
        dial_home=home,
        output_cap_mb=output_cap,
        model_slots=capacities,
        warm_agents=warm,
        agent_idle_s=idle,
    )


def _model_slots(path: Path, servers: list[str], flags: list[int] | None, table: object) -> dict[str, int]:
    """--model-slots N, the k-th for the k-th --model-server; else node.toml's table
    `model_slots = {"http://127.0.0.1:1234/v1" = 4}` (LM Studio's, Ollama's or another's)."""
    if flags:
        if len(flags) > len(servers):
            raise ConfigError(
                f"--model-slots given {len(flags)} times for {len(servers)} --model-server"
                " (one per server, in order)"
            )
        pairs = list(zip(servers, flags, strict=False))
    elif isinstance(table, Mapping):
        pairs = [(str(k), v) for k, v in table.items()]
    else:
        raise ConfigError(f"invalid value in {path}: model_slots must be a table of URL = slots")
    slots: dict[str, int] = {}
    for url, count in pairs:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 256:
            raise ConfigError(f"invalid model slots {count!r} for {url} (1 to 256)")
        _check_server(url)
        slots[server_key(url)] = count
    return slots


def _check_server(server: str) -> None:
    if not server.startswith(("http://127.0.0.1:", "http://localhost:", "http://[::1]:")):
        raise ConfigError(f"invalid model server {server!r}: a loopback http:// URL (this machine)")
