"""How the CLI starts a daemon: as a process of its own entry point (`python -m coordinator`,
`python -m node_agent`), never by importing it (DESIGN: cli/ imports neither daemon)."""

from __future__ import annotations

import os
import sys

from cli import QUIET_GRPC

__all__ = ["daemon_env", "exec_daemon"]


def daemon_env() -> dict[str, str]:
    """The environment for a daemon: ours, less the gRPC quiet the CLI set for itself
    (daemons keep gRPC's own errors in their logs, and pass the rest on to jobs)."""
    env = dict(os.environ)
    if QUIET_GRPC:
        env.pop("GRPC_VERBOSITY", None)
    return env


def exec_daemon(module: str, args: list[str]) -> None:
    """Replace this process with a daemon's own entry point."""
    argv = [sys.executable, "-m", module, *args]
    sys.stdout.flush()
    os.execve(sys.executable, argv, daemon_env())
