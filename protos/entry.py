"""What both daemons' entry points share (`python -m coordinator`, `python -m node_agent`):
an argument parser that fails in one line, a port check before gRPC binds, and the read of
their TOML settings file.

Error handling: `check_port_free` raises CannotListen with one line; argparse errors exit 2
with one `flota: ...` line.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import psutil

from protos import statelock

__all__ = ["CannotListen", "OneLineParser", "bind_reason", "check_port_free", "read_settings", "lan_address"]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad input as the CLI does: one `flota: ...` line, exit 2
    (not a usage block; `-h` still prints the full help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"flota: {message} (see {self.prog} -h)\n")


def read_settings(path: Path, known: Iterable[str]) -> dict[str, Any]:
    """A daemon's settings file: {} when there is none; ValueError (one line naming the
    file) when it cannot be read or parsed, or holds a key the daemon does not know, so a
    typo is never silently ignored."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    unknown = sorted(data.keys() - set(known))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r} in {path} (known: {', '.join(sorted(known))})")
    return data


class CannotListen(Exception):
    """The address the daemon must listen on is taken, not on this machine, or not allowed."""


_BIND_ERRORS = {
    errno.EADDRINUSE: "port already in use",
    errno.EADDRNOTAVAIL: "no such address on this machine",
    errno.EACCES: "permission denied (ports below 1024 need root)",
}


def bind_reason(exc: OSError) -> str | None:
    """Why a bind failed, in the words the daemons use; None for another error."""
    return _BIND_ERRORS.get(exc.errno or 0)


def check_port_free(state_dir: Path, host: str, port: int) -> None:
    """Refuse a port another process holds, in one line, before gRPC tries it: gRPC's own
    refusal comes with a C-core log line and advice about GRPC_VERBOSITY. When another
    daemon holds this state directory, that is the error to report (the daemon does)."""
    if not port or statelock.holder(state_dir):
        return
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As gRPC binds: SO_REUSEADDR, so a port left in TIME_WAIT counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        reason = bind_reason(exc)
        if reason:
            raise CannotListen(f"cannot listen on {host}:{port}: {reason}") from None
        # Anything else (a name that does not resolve ...) is left to the daemon's own error.


def lan_address() -> str:
    """An address others on the LAN can reach this machine at, for a wildcard listener:
    the first private IPv4 of an interface that is up (127.0.0.1 when there is none)."""
    stats = psutil.net_if_stats()
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        for a in addrs:
            try:
                ip = ipaddress.ip_address(a.address)
            except ValueError:
                continue
            if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
                return a.address
    return "127.0.0.1"
