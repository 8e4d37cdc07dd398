"""What a node has been asked to run, on disk, until the coordinator has the result.

One directory per attempt, ``<state>/jobs/<attempt>/``:

    spec.pb    written before anything runs
    proc       "pid create_time spawned_at" once the job's process started
    output     the job's output (stdout and stderr), appended by the job itself
    exit       the command's exit status, written by the node's keeper when it ends
    offset     how far into ``output`` the daemon has published lines
    stop       "reason detail" once someone asked the job to stop
    result.pb  the result, once the attempt is over

The directory goes away when the coordinator acknowledges the result. So a job keeps
running through a daemon restart, and a result produced while the coordinator was away
is still there when it comes back.

``spec.pb`` and ``result.pb`` hold the wire messages (``JobSpec``, ``JobResult``), as
every daemon so far wrote them: an upgraded daemon finds the jobs an older one left.
The journal speaks models (:class:`~node_agent.models.Job`, :class:`~node_agent.models.
Result`) and converts at the file (:mod:`node_agent.convert`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from node_agent.convert import job_from_bytes, job_to_bytes, result_from_bytes, result_to_bytes
from node_agent.models import Job, Result
from protos.contract import ResultStatus

__all__ = ["Entry", "Journal"]


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
    offset: int = 0
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

    def published(self, attempt_id: str, offset: int) -> None:
        _write(self.dir(attempt_id) / "offset", str(offset).encode())

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
            try:
                offset = int(_read(d / "offset") or 0)
            except ValueError:
                offset = 0
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
                    _stop_reason(reason),
                    detail,
                )
            )
        return found


def _stop_reason(text: str) -> ResultStatus | None:
    try:
        return ResultStatus(text) if text else None
    except ValueError:  # not one we write; a stop was asked for all the same
        return ResultStatus.LOST
