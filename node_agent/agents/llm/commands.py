"""The llm agent's ``run_command`` tool: bash in the worktree, bounded in time and output.

Commands run as ``bash -c`` in the worktree, in their own process group (so a timeout
kills the whole group, children included), with stdin closed and output captured in an
anonymous temporary file (a background child keeping a pipe open cannot stall us), and
only a bounded head and tail of that output reaches the model.

The confinement of :mod:`files` is for the file tools: a command runs as the job's user
and can reach whatever that user can; isolating it (a container, a namespace) is the
runner's business, not this module's. It does not get the model's credentials
(:func:`command_env`).

Error handling: :class:`ToolError` for a command that cannot be run at all; a command
that fails, times out or is killed is an ordinary result (its status line says how).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from node_agent.agents.llm.errors import ToolError

__all__ = [
    "DEFAULT_COMMAND_S",
    "MAX_COMMAND_OUTPUT",
    "MAX_COMMAND_S",
    "command_env",
    "kill_group",
    "run_command",
]

MAX_COMMAND_OUTPUT: Final = 16_000  # head + tail of a command's output
DEFAULT_COMMAND_S: Final = 120.0
MAX_COMMAND_S: Final = 1800.0
_KILL_GRACE_S: Final = 1.0
_SHELL: Final = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"

_SECRET_SUFFIXES: Final = ("_API_KEY", "_API_TOKEN", "_SECRET_ACCESS_KEY", "_SESSION_TOKEN")


def command_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment a model's command gets: ours without the model's credentials."""
    return {
        k: v
        for k, v in env.items()
        if not k.startswith("FLOTA_LLM_") and not k.upper().endswith(_SECRET_SUFFIXES)
    }


def run_command(
    root: Path,
    command: str,
    timeout_s: float = DEFAULT_COMMAND_S,
    *,
    env: Mapping[str, str] | None = None,
    groups: set[int] | None = None,
) -> str:
    """Run ``command`` with bash in ``root``; its exit status and bounded output.

    The command leads its own process group; at ``timeout_s`` the group gets SIGTERM,
    then SIGKILL. ``groups`` (when given) tracks groups still to be killed at the end.
    """
    if not command.strip():
        raise ToolError("error: empty command")
    if "\0" in command:
        raise ToolError("error: command contains a NUL byte")
    timeout_s = max(0.1, min(float(timeout_s), MAX_COMMAND_S))
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [_SHELL, "-c", command],
                cwd=os.path.realpath(root),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            raise ToolError(f"error: cannot start {_SHELL}: {exc.strerror}") from exc
        if groups is not None:
            groups.add(proc.pid)
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc.pid)
            proc.wait()
        except BaseException:  # interrupted (SIGTERM to the agent): take the command down too
            kill_group(proc.pid)
            proc.wait()
            raise
        elapsed = time.monotonic() - started
        output = _bounded_output(out)
    if groups is not None and not _group_alive(proc.pid):
        groups.discard(proc.pid)  # nothing left in the background
    if timed_out:
        status = f"killed after the timeout of {timeout_s:g} s"
    elif proc.returncode < 0:
        status = f"killed by signal {-proc.returncode}"
    else:
        status = f"exit code {proc.returncode}"
    return f"[{status}, {elapsed:.1f} s]\n{output}" if output else f"[{status}, {elapsed:.1f} s, no output]"


def kill_group(group: int, grace_s: float = _KILL_GRACE_S) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after ``grace_s``."""
    if group <= 1:
        return
    try:
        os.killpg(group, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _bounded_output(out: Any) -> str:
    size = out.seek(0, os.SEEK_END)
    out.seek(0)
    if size <= MAX_COMMAND_OUTPUT:
        return str(out.read().decode("utf-8", errors="replace"))
    half = MAX_COMMAND_OUTPUT // 2
    head = out.read(half).decode("utf-8", errors="replace")
    out.seek(size - half)
    tail = out.read(half).decode("utf-8", errors="replace")
    return f"{head}\n[... {size - 2 * half} bytes of output cut ...]\n{tail}"
