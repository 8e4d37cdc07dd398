"""Every job's process, whatever its agent: started so that it outlives the daemon.

A job runs as ``bash -c <command>`` in a session of its own, started by the node's
keeper (:mod:`node_agent.keeper`, driven through :class:`KeeperClient`), not by the
daemon: the command and what it starts form one process group that can be signalled as
a whole, and the keeper, its parent, writes its exit status to the job's ``exit`` file
before reaping it. Output (stdout and stderr together) goes to a file, not a pipe, so a
daemon that crashes or is restarted leaves the job running undisturbed: the next daemon
finds it again with :func:`attach`, learns its end through a pidfd, reads its status
from the exit file and its output from where the last daemon stopped reading
(:class:`OutputTail`). The shell agent, the llm agent and agent CLIs all run this way.

A status is the command's exit code, or -N when a signal N ended it (``kill $$``, a
cancel's SIGTERM, a timeout's SIGKILL, the OOM killer).

Error handling: :class:`~node_agent.errors.SpawnError` means the command never started
(missing directory, no shell, a NUL in the environment); everything after that is an outcome.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from node_agent.commandline import SHELL
from node_agent.errors import SpawnError

__all__ = [
    "SHELL",
    "JobProcess",
    "KeeperClient",
    "OutputTail",
    "attach",
    "kill_escaped",
    "signal_group",
]

log = logging.getLogger(__name__)


_KEEPER = Path(__file__).with_name("keeper.py")
_REAPED_WAIT_S = 5.0  # how long an ended job may stay a zombie before its status counts as lost
_MAX_LINE_BYTES = 8192
_TRUNCATED = " …[line truncated]"
_TAIL_LINES = 40
# A batch is one event on the wire: big enough that a chatty job costs few events,
# small enough to stay far below the 4 MiB message limit.
_BATCH_LINES = 1000
_BATCH_BYTES = 256 * 1024
_POLL_S = 0.05  # how often a running job's output file is read
_READ_BYTES = 1 << 20


class JobProcess:
    """A job's process: started by this daemon's keeper, or found again after a restart."""

    def __init__(
        self,
        pid: int,
        create_time: float,
        ended: asyncio.Future[int | None] | None = None,
        spawned_at: float = 0.0,
    ) -> None:
        self.pid = pid
        self.create_time = create_time
        self.spawned_at = spawned_at
        self._ended = ended  # the keeper's word on its status, when we asked it to start

    @property
    def group(self) -> int:
        return self.pid  # a session leader leads its own group

    async def wait(self) -> int | None:
        """Wait for the job to end; its status when our keeper reported it, else None
        (then its exit file says, if a keeper wrote one)."""
        loop = asyncio.get_running_loop()
        if self._ended is not None and self._ended.get_loop() is loop:
            code = await self._ended
            if code is not None:
                return code
            # Our keeper went away; the job, if it still runs, is an orphan now.
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            fd = -1
        except OSError:  # no pidfd (old kernel): poll
            while _alive(self.pid, self.create_time, zombie=False):
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
        # A keeper writes the status before it reaps: while the job is a zombie, it is coming.
        deadline = time.monotonic() + _REAPED_WAIT_S
        while _alive(self.pid, self.create_time) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        return None


# The keeper's answer to a spawn, and the future its "ended" message will resolve.
_Reply = tuple[dict[str, Any], "asyncio.Future[int | None] | None"]


@dataclasses.dataclass
class _Link:
    """One keeper process and the daemon's connection to it, on one event loop."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket
    loop: asyncio.AbstractEventLoop
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.Task[None] | None = None
    replies: dict[int, asyncio.Future[_Reply]] = dataclasses.field(default_factory=dict)
    ended: dict[int, asyncio.Future[int | None]] = dataclasses.field(default_factory=dict)
    alive: bool = True
    leaving: bool = False  # it said it leaves: what it has not answered, it never saw


class _Gone(Exception):
    """The keeper said it leaves (an idle agent host) before it read the request."""


class KeeperClient:
    """The daemon's end of its keeper: started at the first spawn, and again if it died.

    ``program`` is what to start instead of the keeper (the llm agent host,
    :mod:`node_agent.agents.llm.host`, which speaks the same wire), with the socket's
    descriptor appended to it; ``env`` its environment (default: the daemon's)."""

    def __init__(
        self,
        program: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        what: str = "job keeper",
    ) -> None:
        self.program = list(program) or [sys.executable, "-I", "-S", str(_KEEPER)]
        self.env = env
        self.what = what
        self._link: _Link | None = None
        self._ready: asyncio.Task[_Link] | None = None
        self._ids = itertools.count(1)

    async def spawn(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        output: Path,
        exit_file: Path,
        proc_file: Path | None = None,
    ) -> JobProcess:
        """Start ``argv`` in ``cwd`` with exactly ``env``, appending its output to ``output``;
        its status goes to ``exit_file``, and "pid create_time spawned_at" to ``proc_file``
        before this returns (by the keeper, so that it is there even if we die waiting)."""
        for _ in range(3):
            link = await self._connect()
            if link.alive:
                try:
                    return await self._ask(link, argv, cwd, env, output, exit_file, proc_file)
                except _Gone:  # it left (idle) without reading the request: a new one takes it
                    continue
        raise SpawnError(f"cannot start the {self.what}: it exited at once")

    async def _ask(
        self,
        link: _Link,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        output: Path,
        exit_file: Path,
        proc_file: Path | None,
    ) -> JobProcess:
        request_id = next(self._ids)
        reply: asyncio.Future[_Reply] = link.loop.create_future()
        link.replies[request_id] = reply
        request = {
            "id": request_id,
            "argv": list(argv),
            "cwd": str(cwd),
            "env": dict(env),
            "output": str(output),
            "exit": str(exit_file),
            "proc": str(proc_file or ""),
        }
        assert link.writer is not None
        link.writer.write(json.dumps(request).encode() + b"\n")
        answer, ended = await reply
        if answer.get("gone"):
            raise _Gone
        if "error" in answer:
            raise SpawnError(f"cannot start {argv[0]} in {cwd}: {answer['error']}")
        if "proc_error" in answer:  # disk full: it runs; only a daemon restart would miss it
            log.error("cannot journal the process of %s: %s", proc_file, answer["proc_error"])
        pid, started, spawned_at = (
            int(answer["pid"]),
            float(answer["create_time"]),
            float(answer["spawned_at"]),
        )
        return JobProcess(pid, started, ended, spawned_at)

    async def open(self) -> None:
        """Start it now rather than at the first spawn (``--warm-agents``)."""
        await self._connect()

    async def close(self) -> None:
        """Let the keeper go: it leaves at once, or when the jobs it still keeps have ended."""
        link, self._link, self._ready = self._link, None, None
        if link is None:
            return
        self._drop(link)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(link.proc.wait, 1.0)

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = self._link
        if link is not None and (not link.alive or link.loop is not loop):
            self._drop(link)  # dead, or left behind by an event loop that is gone
            self._link = self._ready = None
        if self._link is not None:
            return self._link
        if self._ready is None or self._ready.get_loop() is not loop:
            self._ready = loop.create_task(self._start())
        try:
            return await asyncio.shield(self._ready)
        except SpawnError:
            self._ready = None  # the next spawn tries again
            raise

    async def _start(self) -> _Link:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [*self.program, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=None if self.env is None else dict(self.env),
                stdin=subprocess.DEVNULL,
                cwd="/",  # it may outlive the daemon: it must not hold a directory busy
                start_new_session=True,  # no terminal's Ctrl-C or group signal reaches it
            )
        except OSError as exc:
            ours.close()
            raise SpawnError(f"cannot start the {self.what}: {exc.strerror or exc}") from exc
        finally:
            theirs.close()
        link = _Link(proc, ours, loop)
        reader, link.writer = await asyncio.open_unix_connection(sock=ours)
        link.reader = loop.create_task(self._read(link, reader))
        self._link = link
        return link

    async def _read(self, link: _Link, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if "leaving" in message:  # idle: it answers nothing more, and exits
                    link.leaving, link.alive = True, False
                    continue
                if "ended" in message:
                    done = link.ended.pop(int(message["ended"]), None)
                    if done is not None and not done.done():
                        done.set_result(int(message["code"]))
                    continue
                waiting = link.replies.pop(int(message["id"]), None)
                ended: asyncio.Future[int | None] | None = None
                if "pid" in message:
                    ended = link.ended[int(message["pid"])] = link.loop.create_future()
                if waiting is not None and not waiting.done():
                    waiting.set_result((message, ended))
            if link is self._link:
                log.info("the %s (pid %d) has gone; a new one takes the next job", self.what, link.proc.pid)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("the %s's connection failed: %s", self.what, exc)
        finally:
            link.alive = False
            if link.leaving:  # it exits now: reaped, not left a zombie
                threading.Thread(target=_reap, args=(link.proc,), daemon=True).start()
            for waiting in link.replies.values():
                if not waiting.done():
                    gone = {"gone": True} if link.leaving else {"error": f"the {self.what} exited"}
                    waiting.set_result((gone, None))
            for done in link.ended.values():
                if not done.done():
                    done.set_result(None)
            link.replies.clear()
            link.ended.clear()

    @staticmethod
    def _drop(link: _Link) -> None:
        link.alive = False
        if link.reader is not None and not link.loop.is_closed():
            link.reader.cancel()
        with contextlib.suppress(Exception):
            if link.writer is not None and not link.loop.is_closed():
                link.writer.close()
        link.sock.close()  # the keeper sees its daemon gone


def _reap(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)


def attach(pid: int, create_time: float) -> JobProcess | None:
    """The journaled job if that very process still exists (a zombie too: its keeper is
    about to record its status), else None (a reused pid belongs to someone else: its
    start time differs)."""
    return JobProcess(pid, create_time) if _alive(pid, create_time) else None


def _alive(pid: int, create_time: float, *, zombie: bool = True) -> bool:
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) >= 0.01:
            return False
        return zombie or proc.status() != psutil.STATUS_ZOMBIE
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

    def start(self, group: asyncio.TaskGroup | None = None) -> None:
        """Follow the file in a task of ``group`` (the attempt's), else of the loop."""
        follow = self._follow()
        self._task = group.create_task(follow) if group else asyncio.get_running_loop().create_task(follow)

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
