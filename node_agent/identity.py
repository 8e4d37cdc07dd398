"""A node's identity on disk: stable id, private key, certificate, CA, coordinator address.

Layout of `<state>/identity/`: `id`, `node.key` (0600), `node.pem`, `ca.pem`, `coordinator`.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from node_agent.errors import ConfigError

__all__ = ["Identity", "load_identity", "node_id", "write_private"]


@dataclass(frozen=True, slots=True)
class Identity:
    id: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    coordinator: str  # host:port of the coordinator's API


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, with that mode from creation on."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def node_id(state_dir: Path) -> str:
    """The node's stable id: made once, then read back from the state directory."""
    path = state_dir / "identity" / "id"
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_hex(8)
        write_private(path, value.encode())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return value


def load_identity(state_dir: Path) -> Identity:
    d = state_dir / "identity"
    names = ("node.key", "node.pem", "ca.pem", "coordinator")
    if not all((d / n).exists() for n in names):
        raise ConfigError(
            f"this node has not joined a coordinator (no certificate in {d}); "
            "run: flota node join ADDR --token TOKEN"
        )
    key = d / "node.key"
    if key.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{key} is readable by other users; run: chmod 600 {key}")
    return Identity(
        id=node_id(state_dir),
        key_pem=key.read_bytes(),
        cert_pem=(d / "node.pem").read_bytes(),
        ca_pem=(d / "ca.pem").read_bytes(),
        coordinator=(d / "coordinator").read_text().strip(),
    )
