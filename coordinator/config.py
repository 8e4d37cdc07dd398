"""Coordinator settings: flags first, then `<state>/coordinator.toml`, then defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coordinator.errors import ConfigError
from protos import contract
from protos.contract import DEFAULT_COORDINATOR_PORT, flota_home
from protos.entry import read_settings
from protos.limits import NODE_ID_RE

__all__ = [
    "CoordinatorConfig",
    "DEFAULT_PUSH_TIMEOUT_S",
    "MAX_PUSH_TIMEOUT_S",
    "flota_home",
    "load_config",
    "parse_hostport",
]

DEFAULT_PUSH_TIMEOUT_S = 90.0  # pushing a run's base to the user's remote
MAX_PUSH_TIMEOUT_S = 110.0  # the CLI waits 120 s for SubmitRun: a longer push would end in its deadline
# The keys coordinator.toml may hold (docs/cli.md); anything else is refused.
FILE_KEYS = frozenset(
    {
        "listen",
        "join_port",
        "advertise",
        "mdns",
        "unreachable_after_s",
        "lost_after_s",
        "nodes",
        "push_timeout_s",
    }
)


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    state_dir: Path
    admin_dir: Path
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_COORDINATOR_PORT
    join_port: int = DEFAULT_COORDINATOR_PORT + 1
    advertise: str = ""  # host that nodes use to reach us; empty: guessed
    mdns: bool = True
    static_nodes: tuple[tuple[str, str], ...] = ()  # (node id, host:port)
    heartbeat_s: float = 1.0
    unreachable_after_s: float = 3.0
    lost_after_s: float = 30.0
    default_retries: int = 1
    token_ttl_s: float = 900.0
    push_timeout_s: float = DEFAULT_PUSH_TIMEOUT_S


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    try:
        return contract.parse_hostport(text, default_port)
    except ValueError as exc:
        raise ConfigError(f"{exc}; port 0 picks a free one") from exc


def load_config(
    home: Path | None = None,
    *,
    listen: str | None = None,
    join_listen_port: int | None = None,
    advertise: str | None = None,
    mdns: bool | None = None,
    lost_after_s: float | None = None,
    unreachable_after_s: float | None = None,
    push_timeout_s: float | None = None,
) -> CoordinatorConfig:
    home = home or flota_home()
    state = home / "coordinator"
    path = state / "coordinator.toml"
    try:
        file = read_settings(path, FILE_KEYS)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    host, port = parse_hostport(
        listen or str(file.get("listen", f"0.0.0.0:{DEFAULT_COORDINATOR_PORT}")), DEFAULT_COORDINATOR_PORT
    )
    try:
        if join_listen_port is None:
            join_listen_port = int(file.get("join_port", port + 1 if port else 0))
        lost = lost_after_s if lost_after_s is not None else float(file.get("lost_after_s", 30.0))
        unreachable = (
            unreachable_after_s
            if unreachable_after_s is not None
            else float(file.get("unreachable_after_s", 3.0))
        )
        push_timeout = (
            push_timeout_s
            if push_timeout_s is not None
            else float(file.get("push_timeout_s", DEFAULT_PUSH_TIMEOUT_S))
        )
        items = list(file.get("nodes", []))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value in {path}: {exc}") from exc
    if not 0 <= join_listen_port < 65536:
        raise ConfigError(f"invalid join port {join_listen_port}")
    static = []
    for item in items:
        node_id, sep, addr = str(item).partition("@")
        if not sep or not NODE_ID_RE.match(node_id) or parse_hostport(addr, 0)[1] == 0:
            raise ConfigError(f"invalid static node {item!r} in {path} (expected ID@HOST:PORT)")
        static.append((node_id, addr))
    if not 0.5 <= unreachable <= lost:
        raise ConfigError("need 0.5 <= unreachable-after <= lost-after (seconds)")
    if not 1.0 <= push_timeout <= MAX_PUSH_TIMEOUT_S:
        raise ConfigError(f"need 1 <= push timeout <= {MAX_PUSH_TIMEOUT_S:g} (seconds), got {push_timeout:g}")
    return CoordinatorConfig(
        state_dir=state,
        admin_dir=home / "admin",
        listen_host=host,
        listen_port=port,
        join_port=join_listen_port,
        advertise=advertise or str(file.get("advertise", "")),
        mdns=mdns if mdns is not None else bool(file.get("mdns", True)),
        static_nodes=tuple(static),
        unreachable_after_s=unreachable,
        lost_after_s=lost,
        push_timeout_s=push_timeout,
    )
