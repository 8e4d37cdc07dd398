"""What a node has been asked to run, on disk, until the coordinator has the result.

One directory per attempt, ``<state>/jobs/<attempt>/``:

    spec.pb    written before anything runs
    proc       "pid create_time spawned_at" once the job's process started
    output     the job's output (stdout and stderr), appended by the job itself
    exit       the command's exit status, written by the node's keeper when it ends
    offset     "start dropped marked": where a restarted daemon reads ``output`` on from
               (the oldest line no coordinator has taken), and the lines dropped before
               it, not yet marked in the log and already marked (node_agent.backlog)
    stop       "reason detail" once someone asked the job to stop
    result.pb  the result, once the attempt is over

The directory goes away when the coordinator acknowledges the result. So a job keeps
running through a daemon restart, and a result produced while the coordinator was away
is still there when it comes back.

``output`` grows as the job prints, but the part before ``start`` is freed as the daemon
reads on (:meth:`Journal.trim` punches a hole: the offsets stay, the disk blocks go), so
what a job printed takes about the backlog's cap on disk, however long no coordinator
listens. A file system that cannot punch holes keeps the whole file (the node logs it).

``spec.pb`` and ``result.pb`` hold the wire messages (``JobSpec``, ``JobResult``), as
every daemon so far wrote them: an upgraded daemon finds the jobs an older one left.
The journal speaks models (:class:`~node_agent.models.Job`, :class:`~node_agent.models.
Result`) and converts at the file (:mod:`node_agent.convert`).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from node_agent.convert import job_from_bytes, job_to_bytes, result_from_bytes, result_to_bytes
from node_agent.models import Job, Result
from protos.contract import ResultStatus

__all__ = ["Entry", "Journal"]

log = logging.getLogger(__name__)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    call.restype = ctypes.c_int
    return call


_FALLOCATE = _fallocate()


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Entry:
    """One journaled attempt as found on disk."""

    job: Job
    result: Result | None
    pid: int = 0  # 0: its process never started
    create_time: float = 0.0
    spawned_at: float = 0.0
    exit_code: int | None = None
    offset: int = 0  # where to read the output on from
    dropped: int = 0  # output lines dropped before `offset`, not yet marked in the log
    marked: int = 0  # output lines dropped and marked in the log already
    stop: ResultStatus | None = None  # why someone asked it to stop
    stop_detail: str = ""


class Journal:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def dir(self, attempt_id: str) -> Path:
        return self.root / attempt_id

    def begin(self, job: Job) -> None:
        d = self.dir(job.attempt_id)
        d.mkdir(exist_ok=True, mode=0o700)
        _write(d / "spec.pb", job_to_bytes(job))

    def proc_file(self, attempt_id: str) -> Path:
        return self.dir(attempt_id) / "proc"

    def spawned(self, attempt_id: str, pid: int, create_time: float, spawned_at: float) -> None:
        """The keeper writes this record itself, in the same format, as it starts a job."""
        _write(self.proc_file(attempt_id), f"{pid} {create_time!r} {spawned_at!r}".encode())

    def stopping(self, attempt_id: str, reason: ResultStatus, detail: str) -> None:
        _write(self.dir(attempt_id) / "stop", f"{reason} {detail}".encode())

    def published(self, attempt_id: str, offset: int, dropped: int = 0, marked: int = 0) -> None:
        _write(self.dir(attempt_id) / "offset", f"{offset} {dropped} {marked}".encode())

    def trim(self, attempt_id: str, upto: int) -> bool:
        """Free the disk blocks of the first ``upto`` bytes of the attempt's output: they
        read as zeros from now on, and the job's appends go on at the end. False where the
        file system cannot do it (nothing is freed then)."""
        if _FALLOCATE is None:
            return False
        try:
            fd = os.open(self.output(attempt_id), os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return True  # nothing printed yet, or the attempt was forgotten meanwhile
        try:
            if _FALLOCATE(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, upto) == 0:
                return True
            code = ctypes.get_errno()
        finally:
            os.close(fd)
        if code in _UNSUPPORTED:
            log.warning(
                "cannot free the start of %s (%s): job output stays whole on disk",
                self.output(attempt_id),
                os.strerror(code),
            )
            return False
        raise OSError(code, os.strerror(code), str(self.output(attempt_id)))

    def output(self, attempt_id: str) -> Path:
        return self.dir(attempt_id) / "output"

    def exit_file(self, attempt_id: str) -> Path:
        return self.dir(attempt_id) / "exit"

    def exit_code(self, attempt_id: str) -> int | None:
        try:
            return int(_read(self.exit_file(attempt_id)))
        except ValueError:
            return None

    def finish(self, result: Result) -> None:
        _write(self.dir(result.attempt_id) / "result.pb", result_to_bytes(result))

    def forget(self, attempt_id: str) -> None:
        if attempt_id and "/" not in attempt_id and attempt_id not in (".", ".."):
            shutil.rmtree(self.dir(attempt_id), ignore_errors=True)

    def entries(self) -> list[Entry]:
        """Every journaled attempt, oldest name first; unreadable ones are skipped."""
        found = []
        for d in sorted(self.root.iterdir()):
            try:
                job = job_from_bytes((d / "spec.pb").read_bytes())
            except (OSError, ValueError):
                continue
            result = None
            if (d / "result.pb").exists():
                try:
                    result = result_from_bytes((d / "result.pb").read_bytes())
                except (OSError, ValueError):
                    result = None
            pid, create_time, spawned_at = 0, 0.0, 0.0
            try:
                a, b, c = _read(d / "proc").split()
                pid, create_time, spawned_at = int(a), float(b), float(c)
            except ValueError:
                pass
            offset, dropped, marked = _counts(_read(d / "offset"))
            reason, _, detail = _read(d / "stop").partition(" ")
            found.append(
                Entry(
                    job,
                    result,
                    pid,
                    create_time,
                    spawned_at,
                    self.exit_code(job.attempt_id),
                    offset,
                    dropped,
                    marked,
                    _stop_reason(reason),
                    detail,
                )
            )
        return found


def _counts(text: str) -> tuple[int, int, int]:
    """The offset file: "offset dropped marked", or the lone offset an older daemon wrote."""
    try:
        numbers = [int(word) for word in text.split()]
    except ValueError:
        return 0, 0, 0
    if not 1 <= len(numbers) <= 3 or min(numbers) < 0:
        return 0, 0, 0
    numbers += [0] * (3 - len(numbers))
    return numbers[0], numbers[1], numbers[2]


def _stop_reason(text: str) -> ResultStatus | None:
    try:
        return ResultStatus(text) if text else None
    except ValueError:  # not one we write; a stop was asked for all the same
        return ResultStatus.LOST
