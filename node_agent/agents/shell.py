"""The shell agent's processes: started so that they outlive the daemon.

A job runs as ``/bin/sh -c <wrapper> bash <command> <exit file>`` in a new session:
the wrapper and the command form one process group that can be signalled as a whole,
and the wrapper writes the command's exit status to ``exit file`` when it ends. Output
(stdout and stderr together) goes to a file, not a pipe, so a daemon that crashes or
is restarted leaves the job running undisturbed: the next daemon finds it again with
:func:`attach`, learns its end through a pidfd, reads its status from the exit file and
its output from where the last daemon stopped reading (:class:`OutputTail`).

The wrapper traps SIGTERM (the trap runs only once the command has ended, POSIX says),
so a cancelled job still leaves its status behind; SIGKILL to the group takes both.
A status above 128 is how the shell reports "killed by signal N" (128 + N).

Error handling: :class:`ShellError` means the command never started (missing
directory, no shell, a NUL in the environment); everything after that is an outcome.
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
from pathlib import Path

import psutil

__all__ = [
    "JobProcess",
    "OutputTail",
    "ShellError",
    "attach",
    "describe_exit",
    "kill_escaped",
    "signal_group",
    "spawn",
]

log = logging.getLogger(__name__)


class ShellError(Exception):
    """The command could not be started; nothing ran."""


_SHELL = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"
# The wrapper: run the command in the foreground, keep its status, survive SIGTERM long
# enough to write it. printf is a builtin: nothing to exec on the way out.
_WRAPPER = 'trap : TERM INT; "$0" -c "$1"; rc=$?; printf "%s\\n" "$rc" > "$2"; exit "$rc"'
_MAX_LINE_BYTES = 8192
_TRUNCATED = " …[line truncated]"
_TAIL_LINES = 40
# A batch is one event on the wire: big enough that a chatty job costs few events,
# small enough to stay far below the 4 MiB message limit.
_BATCH_LINES = 1000
_BATCH_BYTES = 256 * 1024
_POLL_S = 0.05  # how often a running job's output file is read
_READ_BYTES = 1 << 20


def describe_exit(code: int) -> str:
    """One line for a non-zero status, naming the signal the shell's 128+N stands for."""
    number = -code if code < 0 else code - 128 if code > 128 else 0
    if number:
        with contextlib.suppress(ValueError):
            name = signal.Signals(number).name
            return f"killed by signal {name}" if code < 0 else f"killed by signal {name} (exit code {code})"
    return f"exit code {code}"


class JobProcess:
    """A job's wrapper process: started by us (a child) or found again after a restart."""

    def __init__(self, pid: int, create_time: float, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.create_time = create_time
        self._popen = popen

    @property
    def group(self) -> int:
        return self.pid  # a session leader leads its own group

    async def wait(self) -> int | None:
        """Wait for the wrapper to end; its status when it was our child, else None."""
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            fd = -1
        except OSError:  # no pidfd (old kernel): poll
            while _alive(self.pid, self.create_time):
                await asyncio.sleep(_POLL_S)
            fd = -1
        if fd >= 0:
            ended: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not ended.done():
                    ended.set_result(None)

            loop.add_reader(fd, readable)
            try:
                await ended
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        if self._popen is not None:
            return self._popen.wait()
        return None


def spawn(command: str, cwd: Path, env: Mapping[str, str], output: Path, exit_file: Path) -> JobProcess:
    """Start ``command`` in ``cwd`` with exactly ``env``, appending its output to ``output``."""
    try:
        with open(output, "ab", buffering=0) as out:
            popen = subprocess.Popen(
                ["/bin/sh", "-c", _WRAPPER, _SHELL, command, str(exit_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
            )
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ShellError(f"cannot start {_SHELL} in {cwd}: {detail}") from exc
    try:
        created = psutil.Process(popen.pid).create_time()
    except psutil.Error:
        created = 0.0  # already gone: attach() will never match it, wait() still reaps it
    return JobProcess(popen.pid, created, popen)


def attach(pid: int, create_time: float) -> JobProcess | None:
    """The journaled wrapper if that very process still runs, else None (a reused pid
    belongs to someone else: its start time differs)."""
    return JobProcess(pid, create_time) if _alive(pid, create_time) else None


def _alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_group(group: int, sig: signal.Signals) -> None:
    if group > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def kill_escaped(attempt_id: str) -> int:
    """SIGKILL every process of the attempt, found by the FLOTA_ATTEMPT_ID in its
    environment: this also reaches children that left the group with setsid."""
    needle = f"FLOTA_ATTEMPT_ID={attempt_id}".encode()
    killed = 0
    me = os.getpid()
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as env_file:
                    if needle not in env_file.read().split(b"\0"):
                        continue
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
            except (OSError, ValueError):
                continue
    return killed


class OutputTail:
    """Reads a job's output file from ``offset`` on, as capped lines in batches.

    ``on_lines`` gets each batch; ``on_offset`` the byte offset just past the last whole
    line delivered, so that a restarted daemon resumes there without repeating lines.
    """

    def __init__(
        self,
        path: Path,
        offset: int,
        on_lines: Callable[[list[str]], None],
        on_offset: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.offset = offset  # bytes consumed from the file
        self._line_start = offset  # where the line being read began: a restart reads on from here
        self._on_lines = on_lines
        self._on_offset = on_offset
        self._partial = bytearray()
        self._overflow = False  # the current line passed the cap; drop the rest of it
        self._pending: list[str] = []
        self._pending_bytes = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def finish(self) -> None:
        """The job has ended: read what is left, including a last line without newline."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._read()
        if self._partial or self._overflow:
            self._line_start = self.offset
            self._end_line()
        self._flush()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(_POLL_S)
            try:
                self._read(limit=8 * _READ_BYTES)
            except Exception:  # a sink that raises must not stop the reading
                log.exception("reading %s failed", self.path)
            self._flush()

    def _read(self, limit: int = 0) -> None:
        """Read on to the end of the file, or about ``limit`` bytes (the loop must not stall)."""
        done = 0
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                while (not limit or done < limit) and (data := f.read(_READ_BYTES)):
                    at = self.offset
                    self.offset += len(data)
                    done += len(data)
                    self._feed(data, at)
        except FileNotFoundError:
            return

    def _feed(self, data: bytes, at: int) -> None:
        """``data`` was read from file offset ``at``."""
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._append(data[start:end])
            self._line_start = at + end + 1
            self._end_line()
            start = end + 1
        self._append(data[start:])

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
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        try:
            self._on_lines(batch)
        except Exception:
            log.exception("log sink failed; dropped %d lines", len(batch))
        if self._on_offset is not None:
            # Only whole lines count as delivered; a restart re-reads a partial one. Not
            # self.offset: a full batch is flushed in the middle of a chunk, and a long
            # line's bytes past the cap are consumed but not in _partial.
            with contextlib.suppress(Exception):
                self._on_offset(self._line_start)
