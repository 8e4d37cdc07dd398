"""Runs attempts: workspace -> agent -> commit -> push, one asyncio task each.

Each attempt is journaled before it starts and its result when it ends, and every
step's failure becomes a result with a one-line error instead of an exception: the
daemon keeps serving whatever one job does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from node_agent.agents.shell import ShellError, run_shell
from node_agent.hub import Hub
from node_agent.journal import Journal
from node_agent.workspace import Workspace, WorkspaceError
from protos.flota.v1 import node_pb2, types_pb2

__all__ = ["Runner"]

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40


@dataclass
class _Active:
    spec: types_pb2.JobSpec
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    started_at: float = 0.0


class Runner:
    def __init__(
        self,
        node_id: str,
        node_name: str,
        workspace: Workspace,
        journal: Journal,
        hub: Hub,
        slots: Callable[[], int],
        kill_grace_s: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self.node_name = node_name
        self.workspace = workspace
        self.journal = journal
        self.hub = hub
        self._slots = slots
        self.kill_grace_s = kill_grace_s
        self.active: dict[str, _Active] = {}
        self.finished: dict[str, types_pb2.JobResult] = {}  # attempt id -> result not yet acked
        self._stopping = False
        self.closing = False  # the daemon is stopping: accept nothing new
        for spec, result in journal.entries():
            if result is not None:
                self.finished[spec.attempt_id] = result
            else:
                # The daemon died while this ran. Its job runs in its own session, so it
                # may still be alive: stop it, so that a retry never runs beside it.
                _kill_job_group(journal.process_group(spec.attempt_id), spec.attempt_id)
                lost = self._result(spec, "lost", time.time(), error="the node daemon restarted mid-job")
                journal.finish(lost)
                self.finished[spec.attempt_id] = lost

    @property
    def running(self) -> int:
        return len(self.active)

    def start(self, spec: types_pb2.JobSpec) -> tuple[bool, str]:
        if spec.attempt_id in self.active or spec.attempt_id in self.finished:
            return True, "already known"
        if self.closing or self._stopping:
            return False, "the node is stopping"
        if len(self.active) >= self._slots():
            return False, f"no free slot ({len(self.active)} of {self._slots()} busy)"
        active = _Active(spec, started_at=time.time())
        self.journal.begin(spec)
        self.active[spec.attempt_id] = active
        active.task = asyncio.get_running_loop().create_task(self._run(active), name=spec.attempt_id)
        return True, ""

    def cancel(self, attempt_id: str) -> bool:
        active = self.active.get(attempt_id)
        if active is None:
            return False
        active.cancel.set()
        return True

    def ack(self, attempt_ids: list[str]) -> None:
        for attempt_id in attempt_ids:
            if self.finished.pop(attempt_id, None) is not None:
                self.journal.forget(attempt_id)

    def jobs(self) -> list[node_pb2.NodeJob]:
        out = [node_pb2.NodeJob(spec=a.spec, state="running") for a in self.active.values()]
        out += [
            node_pb2.NodeJob(
                spec=types_pb2.JobSpec(job_id=r.job_id, attempt_id=r.attempt_id), state="finished", result=r
            )
            for r in self.finished.values()
        ]
        return out

    def cleanup(self, run_id: str) -> int:
        busy = {a.spec.attempt_id for a in self.active.values() if a.spec.run_id == run_id}
        return self.workspace.remove_run(run_id, keep=busy)

    async def stop(self) -> None:
        """Stop every running attempt and journal its result as lost (not cancelled: the
        user did not ask, so the coordinator may retry it elsewhere)."""
        self._stopping = True
        for active in self.active.values():
            active.cancel.set()
        tasks = [a.task for a in self.active.values() if a.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- one attempt ------------------------------------------------------------------

    def _result(
        self, spec: types_pb2.JobSpec, status: str, started: float, **fields: object
    ) -> types_pb2.JobResult:
        now = time.time()
        return types_pb2.JobResult(
            job_id=spec.job_id,
            attempt_id=spec.attempt_id,
            status=status,
            started_at=started,
            finished_at=now,
            duration_s=now - started,
            node_id=self.node_id,
            model=spec.model,
            **fields,  # type: ignore[arg-type]
        )

    async def _run(self, active: _Active) -> None:
        spec = active.spec
        try:
            result = await self._attempt(active)
        except Exception as exc:  # a bug here must not take the daemon down
            log.exception("attempt %s crashed", spec.attempt_id)
            result = self._result(spec, "failed", active.started_at, error=f"internal error: {exc}")
        result.log_lines_lost = self.hub.take_gap(spec.attempt_id)
        try:
            self.journal.finish(result)
        except OSError as exc:  # disk full: still report it; only a restart would lose it
            log.error("cannot journal the result of %s: %s", spec.attempt_id, exc)
        self.finished[spec.attempt_id] = result
        del self.active[spec.attempt_id]
        self.hub.publish(result=result)

    async def _attempt(self, active: _Active) -> types_pb2.JobResult:
        spec, started = active.spec, active.started_at
        self.hub.publish(
            started=node_pb2.JobStarted(job_id=spec.job_id, attempt_id=spec.attempt_id, started_at=started)
        )
        repo = spec.repo if spec.HasField("repo") else None
        try:
            if repo:
                cwd = await asyncio.to_thread(
                    self.workspace.prepare,
                    repo.url,
                    repo.base_ref,
                    repo.base_commit,
                    spec.branch,
                    spec.attempt_id,
                )
            else:
                cwd = self.workspace.scratch(spec.attempt_id)
        except WorkspaceError as exc:
            return self._result(spec, "failed", started, exit_code=-1, error=str(exc))
        if active.cancel.is_set():  # cancelled (or the daemon stopping) while git prepared
            status, error = (
                ("lost", "the node daemon stopped") if self._stopping else ("cancelled", "cancelled")
            )
            return self._result(spec, status, started, exit_code=-1, error=error)

        def on_lines(lines: list[str]) -> None:
            self.hub.log(spec.job_id, spec.attempt_id, lines)

        try:
            outcome = await run_shell(
                spec.command,
                cwd,
                self._env(spec, cwd),
                spec.timeout_s,
                on_lines,
                active.cancel,
                grace_s=self.kill_grace_s,
                on_start=lambda pgid: self.journal.started(spec.attempt_id, pgid),
            )
        except (ShellError, ValueError) as exc:  # cannot start: no shell, bad cwd, NUL in env
            return self._result(spec, "failed", started, exit_code=-1, error=str(exc))
        fields: dict[str, object] = {
            "exit_code": outcome.exit_code,
            "error": outcome.error,
            "log_tail": outcome.log_tail,
        }
        status = outcome.status
        if status == "cancelled" and self._stopping:
            status, fields["error"] = "lost", "the node daemon stopped"
        if repo:
            trailers = {
                "Flota-Job": spec.job_id,
                "Flota-Attempt": spec.attempt_id,
                "Flota-Node": f"{self.node_name} ({self.node_id})",
                "Flota-Agent": spec.agent or "shell",
            }
            if spec.model:
                trailers["Flota-Model"] = spec.model
            title = f"flota: {spec.name or spec.command}"[:200]
            try:
                commit = await asyncio.to_thread(
                    self.workspace.commit_and_push, cwd, spec.branch, f"{title}\n\nstatus: {status}", trailers
                )
            except WorkspaceError as exc:
                fields["error"] = f"cannot commit the result: {exc}"
                return self._result(spec, "failed", started, **fields)
            fields.update(
                base_commit=commit.base_commit,
                head_commit=commit.head_commit,
                files_modified=list(commit.files_modified),
                insertions=commit.insertions,
                deletions=commit.deletions,
            )
            if commit.pushed:
                fields["branch"] = spec.branch
            else:
                # The commit stays in the node's mirror; the result says why it is not on the remote.
                status = "failed"
                fields["error"] = commit.error or "push failed"
        return self._result(spec, status, started, **fields)

    def _env(self, spec: types_pb2.JobSpec, cwd: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(spec.env)
        env.update(
            FLOTA_JOB_ID=spec.job_id,
            FLOTA_RUN_ID=spec.run_id,
            FLOTA_ATTEMPT_ID=spec.attempt_id,
            FLOTA_NODE_ID=self.node_id,
            FLOTA_NODE_NAME=self.node_name,
            FLOTA_WORKTREE=str(cwd),
        )
        return env


def _kill_job_group(pgid: int, attempt_id: str) -> None:
    """Kill a journaled job's process group, but only if a process in it is that job
    (its environment names the attempt): after a reboot the number may be anyone's."""
    if pgid <= 1:
        return
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.environ().get("FLOTA_ATTEMPT_ID") == attempt_id:
                os.killpg(pgid, signal.SIGKILL)
                return
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
