"""Runs attempts: performs what node_agent.lifecycle decides, and feeds back what happens.

Each attempt has one driver task and one event queue. Everything that happens to an
attempt (git finished preparing, the process ended, a cancel, a timeout, the kill grace
passed, the commit was pushed) is an event on that queue; the driver hands it to the
pure ``lifecycle.step`` and performs the actions it returns. Slow work (git) runs in a
thread and reports back as an event, so a cancel is never stuck behind it.

Jobs outlive the daemon: their processes run in their own sessions with output to a
file (see agents.shell). A restarted daemon reads its journal, finds each job again,
and goes on from where the journal says it was. Every failure becomes a result with
a one-line error, never an exception out of the runner.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from node_agent import lifecycle as lc
from node_agent.agents.launch import command_for, read_outcome
from node_agent.agents.shell import (
    JobProcess,
    Keeper,
    OutputTail,
    ShellError,
    attach,
    describe_exit,
    kill_escaped,
    signal_group,
)
from node_agent.hub import Hub
from node_agent.journal import Entry, Journal
from node_agent.local_models import LocalModel
from node_agent.workspace import CommitOutcome, Workspace, WorkspaceError
from protos.contract import redact
from protos.flota.v1 import node_pb2, types_pb2

__all__ = ["Runner"]

log = logging.getLogger(__name__)

# Output held while no coordinator listens, per attempt: at most this much travels in
# the result (well under the 4 MiB message limit); later lines are only counted.
HELD_BYTES = 1 << 20
HELD_BATCH = 1000


@dataclass
class _Attempt:
    spec: types_pb2.JobSpec
    state: lc.State
    started_at: float  # wall clock, when the node accepted it
    events: asyncio.Queue[lc.Event] = field(default_factory=asyncio.Queue)
    cwd: Path | None = None
    proc: JobProcess | None = None
    spawned_at: float = 0.0
    tail: OutputTail | None = None
    commit: CommitOutcome | None = None
    task: asyncio.Task[None] | None = None
    helpers: set[asyncio.Task[None]] = field(default_factory=set)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    # Output read while no coordinator listened: sent when one does, or in the result.
    undelivered: list[str] = field(default_factory=list)
    undelivered_bytes: int = 0
    dropped: int = 0  # lines beyond what `undelivered` may hold
    secrets: dict[str, str] = field(default_factory=dict)  # in memory only, never journaled

    @property
    def id(self) -> str:
        return self.spec.attempt_id


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
        local_models: Callable[[], Sequence[LocalModel]] = tuple,
    ) -> None:
        self.node_id = node_id
        self.node_name = node_name
        self.workspace = workspace
        self.journal = journal
        self.hub = hub
        self._slots = slots
        self.kill_grace_s = kill_grace_s
        self._local_models = local_models
        self.keeper = Keeper()  # the parent of this daemon's job processes
        self.active: dict[str, _Attempt] = {}
        self.finished: dict[str, types_pb2.JobResult] = {}  # attempt id -> result not yet acked
        self._stopping = False
        self.closing = False  # the daemon is stopping: accept nothing new
        self._recovered: list[Entry] = []
        for entry in journal.entries():
            if entry.result is not None:
                self.finished[entry.spec.attempt_id] = entry.result
            else:
                self._recovered.append(entry)

    @property
    def running(self) -> int:
        return len(self.active) + len(self._recovered)

    def resume(self) -> None:
        """Take back the attempts a previous daemon left unfinished (needs the loop)."""
        for entry in self._recovered:
            self._resume(entry)
        self._recovered.clear()

    def _resume(self, entry: Entry) -> None:
        spec = entry.spec
        proc = attach(entry.pid, entry.create_time) if entry.pid else None
        stop, detail = entry.stop, entry.stop_detail
        if spec.secrets and not entry.pid and not stop:
            stop, detail = (
                "lost",
                "the node daemon restarted before the job started; secrets are never kept on disk",
            )
        state, actions = lc.recovered(
            spec.attempt_id,
            spec.HasField("repo"),
            spawned=entry.pid > 0,
            alive=proc is not None,
            exit_code=entry.exit_code,
            stop=stop,
            stop_detail=detail,
        )
        a = _Attempt(spec, state, started_at=entry.spawned_at or time.time())
        a.proc, a.spawned_at = proc, entry.spawned_at
        if entry.pid:
            a.cwd = self._cwd(spec)
            a.tail = self._tail(a, entry.offset)
            if proc is not None:
                a.tail.start()
                self._watch(a)
                self._arm_timeout(a)
        log.info("resumed %s: %s%s", a.id, state.phase, " (process alive)" if proc else "")
        self._launch(a, actions)

    # --- requests ----------------------------------------------------------------------

    def start(self, spec: types_pb2.JobSpec) -> tuple[bool, str]:
        if spec.attempt_id in self.active or spec.attempt_id in self.finished:
            return True, "already known"
        if self.closing or self._stopping:
            return False, "the node is stopping"
        if self.running >= self._slots():
            return False, f"no free slot ({self.running} of {self._slots()} busy)"
        secrets = dict(spec.secrets)
        if secrets:  # the journal (and ListJobs) keep the names, never the values
            spec = _without_secrets(spec)
        self.journal.begin(spec)
        a = _Attempt(spec, lc.State(spec.attempt_id, spec.HasField("repo")), started_at=time.time())
        a.secrets = secrets
        self.hub.publish(
            started=node_pb2.JobStarted(
                job_id=spec.job_id, attempt_id=spec.attempt_id, started_at=a.started_at
            )
        )
        self._launch(a, [lc.Prepare()])
        return True, ""

    def cancel(self, attempt_id: str) -> bool:
        a = self.active.get(attempt_id)
        if a is None:
            return False
        a.events.put_nowait(lc.Stop("cancelled"))
        return True

    def stop_all(self, reason: str, detail: str = "") -> int:
        """Stop every running attempt for `reason` (lifecycle.STOP_STATUS)."""
        for a in self.active.values():
            a.events.put_nowait(lc.Stop(reason, detail))
        return len(self.active)

    def ack(self, attempt_ids: list[str]) -> None:
        for attempt_id in attempt_ids:
            if self.finished.pop(attempt_id, None) is not None:
                self.journal.forget(attempt_id)

    def jobs(self) -> list[node_pb2.NodeJob]:
        out = [node_pb2.NodeJob(spec=a.spec, state="running") for a in self.active.values()]
        out += [node_pb2.NodeJob(spec=e.spec, state="running") for e in self._recovered]
        out += [
            node_pb2.NodeJob(
                spec=types_pb2.JobSpec(job_id=r.job_id, attempt_id=r.attempt_id), state="finished", result=r
            )
            for r in self.finished.values()
        ]
        return out

    def cleanup(self, run_id: str) -> int:
        busy = {a.id for a in self.active.values() if a.spec.run_id == run_id}
        return self.workspace.remove_run(run_id, keep=busy)

    async def stop(self) -> None:
        """Stop every running attempt and journal its result as lost (not cancelled: the
        user did not ask, so the coordinator may retry it elsewhere)."""
        self._stopping = True
        self.stop_all("lost")
        tasks = [a.task for a in self.active.values() if a.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.keeper.close()

    # --- the driver ----------------------------------------------------------------------

    def _launch(self, a: _Attempt, actions: list[lc.Action]) -> None:
        self.active[a.id] = a
        a.task = asyncio.get_running_loop().create_task(self._drive(a, actions), name=a.id)

    async def _drive(self, a: _Attempt, actions: list[lc.Action]) -> None:
        try:
            while True:
                for action in actions:
                    await self._perform(a, action)
                if a.state.phase == "finished":
                    return
                event = await a.events.get()
                before = a.state.stop
                a.state, actions = lc.step(a.state, event)
                if a.state.stop != before:
                    self._journal(self.journal.stopping, a.id, a.state.stop, a.state.stop_detail)
        except Exception as exc:  # a bug here must not take the daemon down
            log.exception("attempt %s crashed", a.id)
            if a.proc is not None:
                signal_group(a.proc.group, signal.SIGKILL)
            await self._finish(a, lc.Finish("failed", f"internal error: {exc}", a.state.exit_code))
        finally:
            for timer in a.timers:
                timer.cancel()
            for helper in a.helpers:
                helper.cancel()

    async def _perform(self, a: _Attempt, action: lc.Action) -> None:
        if isinstance(action, lc.Prepare):
            if not a.spec.HasField("repo") and self._new_scratch(a):
                return  # a new empty directory: nothing to wait for
            self._helper(a, self._prepare(a, action.fresh))
        elif isinstance(action, lc.Spawn):
            await self._spawn(a)
        elif isinstance(action, lc.Terminate):
            if a.proc is not None:
                signal_group(a.proc.group, signal.SIGTERM)
            a.timers.append(
                asyncio.get_running_loop().call_later(self.kill_grace_s, a.events.put_nowait, lc.GraceOver())
            )
        elif isinstance(action, lc.Kill):
            if a.proc is not None:
                signal_group(a.proc.group, signal.SIGKILL)
            # A stopped job leaves nothing behind, not even what left its group; nor does
            # one that ended while no daemon watched (its group can no longer be trusted
            # by number, so what remains is found by its attempt id).
            if a.state.stop or a.proc is None:
                await asyncio.to_thread(kill_escaped, a.id)
        elif isinstance(action, lc.Commit):
            self._helper(a, self._commit(a, action.status))
        elif isinstance(action, lc.Finish):
            await self._finish(a, action)

    def _helper(self, a: _Attempt, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        a.helpers.add(task)
        task.add_done_callback(a.helpers.discard)

    def _journal(self, write: Callable[..., None], *args: object) -> None:
        try:
            write(*args)
        except OSError as exc:  # disk full: go on; only a daemon restart would miss it
            log.error("cannot journal %s: %s", args[0], exc)

    # --- actions -------------------------------------------------------------------------

    def _cwd(self, spec: types_pb2.JobSpec) -> Path:
        if spec.HasField("repo"):
            return self.workspace.worktree_path(spec.attempt_id)
        return self.workspace.scratch_path(spec.attempt_id)

    def _new_scratch(self, a: _Attempt) -> bool:
        try:
            a.cwd = self.workspace.new_scratch(a.id)
        except WorkspaceError as exc:
            a.events.put_nowait(lc.PrepareFailed(str(exc)))
            return True
        except OSError as exc:  # the workspace directory itself: disk full, read-only
            a.events.put_nowait(lc.PrepareFailed(f"cannot prepare the workspace: {exc.strerror or exc}"))
            return True
        if a.cwd is None:
            return False  # a leftover to empty first, off the event loop
        a.events.put_nowait(lc.Prepared())
        return True

    async def _prepare(self, a: _Attempt, fresh: bool) -> None:
        spec = a.spec
        try:
            if spec.HasField("repo"):
                if not fresh:  # a half-made worktree from before a restart
                    await asyncio.to_thread(self.workspace.remove, spec.attempt_id)
                repo = spec.repo
                found = None
                if spec.resume_branches:
                    found = await asyncio.to_thread(
                        self.workspace.find_resume, repo.url, repo.base_commit, list(spec.resume_branches)
                    )
                a.cwd = await asyncio.to_thread(
                    self.workspace.prepare,
                    repo.url,
                    repo.base_ref,
                    repo.base_commit,
                    spec.branch,
                    spec.attempt_id,
                    found[1] if found else "",
                )
                if found:
                    line = f"[flota: resuming from {found[0]} at {found[1][:12]}]"
                    self.hub.log(spec.job_id, spec.attempt_id, [line])
            else:
                a.cwd = await asyncio.to_thread(self.workspace.scratch, spec.attempt_id)
        except WorkspaceError as exc:
            a.events.put_nowait(lc.PrepareFailed(str(exc)))
        except OSError as exc:  # the workspace directory itself: disk full, read-only
            a.events.put_nowait(lc.PrepareFailed(f"cannot prepare the workspace: {exc.strerror or exc}"))
        else:
            a.events.put_nowait(lc.Prepared())

    async def _spawn(self, a: _Attempt) -> None:
        assert a.cwd is not None
        spec = a.spec
        command, extra = command_for(spec, self.journal.dir(a.id), self._local_models())
        try:
            a.proc = await self.keeper.spawn(
                command,
                a.cwd,
                {**self._env(spec, a.cwd), **extra, **a.secrets},
                self.journal.output(a.id),
                self.journal.exit_file(a.id),
                self.journal.proc_file(a.id),  # the keeper journals the process as it starts it
            )
        except ShellError as exc:
            a.events.put_nowait(lc.SpawnFailed(str(exc)))
            return
        except OSError as exc:  # the journal directory: disk full
            a.events.put_nowait(lc.SpawnFailed(f"cannot start the job: {exc.strerror or exc}"))
            return
        a.spawned_at = a.proc.spawned_at
        a.tail = self._tail(a, 0)
        a.tail.start()
        self._watch(a)
        self._arm_timeout(a)

    def _tail(self, a: _Attempt, offset: int) -> OutputTail:
        spec = a.spec

        def on_lines(lines: list[str]) -> None:
            if a.secrets:
                lines = [redact(line, a.secrets) for line in lines]
            if not self.hub.listening:
                self._hold(a, lines)
                return
            if a.undelivered:
                held, a.undelivered, a.undelivered_bytes = a.undelivered, [], 0
                for i in range(0, len(held), HELD_BATCH):
                    self.hub.log(spec.job_id, spec.attempt_id, held[i : i + HELD_BATCH])
            self.hub.log(spec.job_id, spec.attempt_id, lines)

        def on_offset(offset: int) -> None:
            if not a.undelivered:  # a restart re-reads what no coordinator has seen yet
                self._journal(self.journal.published, a.id, offset)

        return OutputTail(self.journal.output(a.id), offset, on_lines, on_offset)

    @staticmethod
    def _hold(a: _Attempt, lines: list[str]) -> None:
        for line in lines:
            size = len(line) + 1
            if a.dropped or a.undelivered_bytes + size > HELD_BYTES:
                a.dropped += 1
            else:
                a.undelivered.append(line)
                a.undelivered_bytes += size

    def _watch(self, a: _Attempt) -> None:
        proc = a.proc
        assert proc is not None

        async def watch() -> None:
            code = await proc.wait()
            recorded = self.journal.exit_code(a.id)  # the command's own status, if it got to write it
            a.events.put_nowait(lc.Exited(recorded if recorded is not None else code))

        self._helper(a, watch())

    def _arm_timeout(self, a: _Attempt) -> None:
        limit = a.spec.timeout_s
        if limit > 0:
            left = max(0.0, a.spawned_at + limit - time.time())
            stop = lc.Stop("timeout", f"timed out after {limit:g} s")
            a.timers.append(asyncio.get_running_loop().call_later(left, a.events.put_nowait, stop))

    async def _commit(self, a: _Attempt, status: str) -> None:
        spec = a.spec
        if a.cwd is None:
            a.cwd = self._cwd(spec)
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
            a.commit = await asyncio.to_thread(
                self.workspace.commit_and_push, a.cwd, spec.branch, f"{title}\n\nstatus: {status}", trailers
            )
        except WorkspaceError as exc:
            a.events.put_nowait(lc.Committed(f"cannot commit the result: {exc}"))
            return
        except OSError as exc:
            a.events.put_nowait(lc.Committed(f"cannot commit the result: {exc.strerror or exc}"))
            return
        a.events.put_nowait(lc.Committed("" if a.commit.pushed else a.commit.error or "push failed"))

    async def _finish(self, a: _Attempt, action: lc.Finish) -> None:
        spec = a.spec
        if a.tail is not None:
            await a.tail.finish()
        now = time.time()
        status, error = action.status, action.error
        if status == "failed" and action.exit_code and error.startswith(("exit code", "killed by")):
            error = describe_exit(action.exit_code)
        agent = read_outcome(spec, self.journal.dir(a.id), self.journal.output(a.id))
        if status == "failed" and agent.status == "partial":  # stopped by its steps or budget
            status, error = "partial", agent.error or "the agent stopped before it finished"
        elif status == "failed" and agent.status == "failed" and agent.error:
            error = agent.error
        fields: dict[str, object] = {}
        if action.exit_code is not None:
            fields["exit_code"] = action.exit_code
        elif action.status != "success":
            fields["exit_code"] = -1
        if a.commit is not None:
            fields.update(
                base_commit=a.commit.base_commit,
                head_commit=a.commit.head_commit,
                files_modified=list(a.commit.files_modified),
                insertions=a.commit.insertions,
                deletions=a.commit.deletions,
            )
            if a.commit.pushed:
                fields["branch"] = spec.branch
        result = types_pb2.JobResult(
            job_id=spec.job_id,
            attempt_id=spec.attempt_id,
            status=status,
            error=redact(error, a.secrets),
            steps=agent.steps,
            tokens_in=agent.tokens_in,
            tokens_out=agent.tokens_out,
            cost_usd=agent.cost_usd,
            check=agent.check,
            answer=redact(agent.answer, a.secrets),
            started_at=a.started_at,
            finished_at=now,
            duration_s=now - a.started_at,
            node_id=self.node_id,
            model=spec.model,
            log_tail=redact("\n".join(a.tail.tail), a.secrets) if a.tail else "",
            **fields,  # type: ignore[arg-type]
        )
        # Lines no coordinator has seen travel in the result (bounded); beyond that, a count.
        result.log_lines.extend(a.undelivered)
        result.log_lines_lost = self.hub.take_gap(spec.attempt_id) + a.dropped
        self._journal(self.journal.finish, result)
        self.finished[spec.attempt_id] = result
        self.active.pop(spec.attempt_id, None)
        self.hub.publish(result=result)

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


def _without_secrets(spec: types_pb2.JobSpec) -> types_pb2.JobSpec:
    copy = types_pb2.JobSpec()
    copy.CopyFrom(spec)
    for name in copy.secrets:
        copy.secrets[name] = ""
    return copy
