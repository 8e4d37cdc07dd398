"""The shell agent: run one command in its own process group and stream its output.

``run_shell`` starts ``bash -c <command>`` (``/bin/sh`` when bash is missing) in a new
session, so the command and everything it spawns form one process group that can be
signalled as a whole. stdout and stderr share one pipe; lines reach ``on_lines`` in
batches (at most every 50 ms, 1000 lines or 256 KiB) so streaming logs stays cheap.

Stopping (timeout or cancel): SIGTERM to the group, up to ``grace_s`` for the group to
exit, then SIGKILL to the group. After the command ends, whatever is left of its group
is SIGKILLed too: a job leaves no processes behind.

Error handling: a command that fails, times out or is cancelled is an outcome, not an
exception. :class:`ShellError` means the command never started (missing directory, no
shell). If the caller's task is cancelled, the group is killed before the cancellation
propagates. ``on_lines`` should not raise; if it does, the batch is logged and dropped
and the command keeps running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ShellError", "ShellOutcome", "run_shell"]

log = logging.getLogger(__name__)


class ShellError(Exception):
    """The command could not be started; nothing ran."""


@dataclass(frozen=True)
class ShellOutcome:
    """How a shell command ended."""

    status: str  # success | failed | timeout | cancelled
    exit_code: int  # negative: killed by that signal
    log_tail: str  # the last lines of output, newline-joined
    error: str  # one line; empty on success


_SHELL = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"
_MAX_LINE_BYTES = 8192
_TRUNCATED = " …[line truncated]"
_TAIL_LINES = 40
# A batch is one event on the wire: big enough that a chatty job costs few events,
# small enough to stay far below the 4 MiB message limit.
_BATCH_LINES = 1000
_BATCH_BYTES = 256 * 1024
_BATCH_S = 0.05
# After the group is killed only a process that left it (setsid) can still hold the
# pipe open; do not wait for it longer than this.
_DRAIN_S = 1.0
_POLL_S = 0.02


class _LineReader(asyncio.Protocol):
    """Splits the output pipe into capped lines, batches them, keeps the tail."""

    def __init__(self, on_lines: Callable[[list[str]], None], loop: asyncio.AbstractEventLoop) -> None:
        self._on_lines = on_lines
        self._loop = loop
        self._partial = bytearray()
        self._overflow = False  # the current line passed the cap; drop the rest of it
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self.closed: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._append(data[start:end])
            self._end_line()
            start = end + 1
        self._append(data[start:])
        if self._pending and self._timer is None:
            self._timer = self._loop.call_later(_BATCH_S, self.flush)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._partial or self._overflow:
            self._end_line()
        self.flush()
        if not self.closed.done():
            self.closed.set_result(None)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        try:
            self._on_lines(batch)
        except Exception:
            log.exception("log sink failed; dropped %d lines", len(batch))

    def _append(self, chunk: bytes) -> None:
        if self._overflow or not chunk:
            return
        room = _MAX_LINE_BYTES - len(self._partial)
        if len(chunk) > room:
            self._partial += chunk[:room]
            self._overflow = True
        else:
            self._partial += chunk

    def _end_line(self) -> None:
        line = self._partial.decode("utf-8", errors="replace").removesuffix("\r")
        if self._overflow:
            line += _TRUNCATED
        self._partial.clear()
        self._overflow = False
        self._pending.append(line)
        self._pending_bytes += len(line.encode())
        self.tail.append(line)
        if len(self._pending) >= _BATCH_LINES or self._pending_bytes >= _BATCH_BYTES:
            self.flush()


async def run_shell(
    command: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    on_lines: Callable[[list[str]], None],
    cancel: asyncio.Event,
    grace_s: float = 5.0,
    on_start: Callable[[int], None] | None = None,
) -> ShellOutcome:
    """Run ``command`` with the shell in ``cwd`` with exactly ``env``; no timeout if ``timeout_s <= 0``."""
    if cancel.is_set():
        return ShellOutcome("cancelled", 0, "", "cancelled before start")
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    reader = _LineReader(on_lines, loop)
    try:
        transport, _ = await loop.connect_read_pipe(lambda: reader, os.fdopen(read_fd, "rb", buffering=0))
    except BaseException:
        os.close(write_fd)
        raise
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                _SHELL,
                "-c",
                command,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
            )
        finally:
            # Only the child may hold the write end, or we would never see EOF.
            os.close(write_fd)
    except BaseException as exc:
        transport.close()
        if isinstance(exc, OSError):
            raise ShellError(f"cannot start {_SHELL} in {cwd}: {exc.strerror or exc}") from exc
        raise

    # start_new_session makes the shell a session and group leader: group id == pid.
    group = proc.pid
    reason = ""
    try:
        if on_start is not None:
            on_start(group)  # e.g. journaled, so a restarted daemon can find the group
        reason = await _supervise(proc, group, cancel, timeout_s, grace_s)
    finally:
        # Also on our own cancellation: no process of the job may outlive this call.
        _signal_group(group, signal.SIGKILL)
        if proc.returncode is None:
            with contextlib.suppress(asyncio.CancelledError):
                await proc.wait()
        await asyncio.wait([reader.closed], timeout=_DRAIN_S)
        transport.close()
        await asyncio.wait([reader.closed], timeout=_DRAIN_S)

    code = proc.returncode
    assert code is not None
    tail = "\n".join(reader.tail)
    if reason == "timeout":
        return ShellOutcome("timeout", code, tail, f"timed out after {timeout_s:g} s")
    if reason == "cancelled":
        return ShellOutcome("cancelled", code, tail, "cancelled")
    if code == 0:
        return ShellOutcome("success", 0, tail, "")
    if code < 0:
        return ShellOutcome("failed", code, tail, f"killed by signal {_signal_name(-code)}")
    return ShellOutcome("failed", code, tail, f"exit code {code}")


async def _supervise(
    proc: asyncio.subprocess.Process,
    group: int,
    cancel: asyncio.Event,
    timeout_s: float,
    grace_s: float,
) -> str:
    """Wait for the leader to exit, or stop the group; return "", "timeout" or "cancelled"."""
    exited = asyncio.ensure_future(proc.wait())
    cancelled = asyncio.ensure_future(cancel.wait())
    try:
        done, _ = await asyncio.wait(
            [exited, cancelled],
            timeout=timeout_s if timeout_s > 0 else None,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if exited in done:
            return ""
        reason = "cancelled" if cancelled in done else "timeout"
        await _stop_group(group, exited, grace_s)
        return reason
    finally:
        cancelled.cancel()
        if not exited.done():
            exited.cancel()


async def _stop_group(group: int, exited: asyncio.Future[int], grace_s: float) -> None:
    _signal_group(group, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    await asyncio.wait([exited], timeout=grace_s)
    # The leader may die at once while a child still cleans up after SIGTERM: give the
    # rest of the group the remaining grace as well.
    while _group_alive(group) and loop.time() < deadline:
        await asyncio.sleep(_POLL_S)
    _signal_group(group, signal.SIGKILL)
    await exited


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    """True while a process of the group is still running (zombies do not count)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg also reaches zombies, and an init that reaps lazily (containers) can keep
    # them for seconds; they hold nothing, so where /proc exists look closer.
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                data = stat_file.read()
        except OSError:
            continue
        # Fields after "(comm)": state, ppid, pgrp, ...; comm itself may hold spaces.
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(group).encode() and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
