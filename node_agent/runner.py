"""Runs attempts: performs what node_agent.lifecycle decides, and feeds back what happens.

Each attempt has one driver task and one event queue. Everything that happens to an
attempt (git finished preparing, the process ended, a cancel, a timeout, the kill grace
passed, the commit was pushed) is an event on that queue; the driver hands it to the
pure ``lifecycle.step`` and performs the actions it returns. It decides nothing: how
an attempt ended is the lifecycle's ``Finish``, recorded as it is. Slow work (git) runs
in a thread and reports back as an event, so a cancel is never stuck behind it.

Tasks: the drivers run in the task group the daemon hands to :meth:`Runner.resume`
(its app owns it); each driver opens a task group of its own for its attempt's helpers
(git, the process watch), so nothing of an attempt outlives its driver.

Jobs outlive the daemon: their processes run in their own sessions with output to a
file (see node_agent.process). A restarted daemon reads its journal, finds each job
again, and goes on from where the journal says it was. Every failure becomes a result
with a one-line error, never an exception out of the runner.

A job that could not reach its model server has the node look at its local servers
again (``recheck_models``) before its result goes out: if the server was this node's
own, the node stops offering its models first, so a retry goes to another node.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from node_agent import lifecycle as lc
from node_agent.agents.launch import command_for, read_report
from node_agent.attempt import HELD_BYTES, Attempt, input_file, job_env, result_of, without_secrets
from node_agent.backlog import CAP_BYTES, Backlog, batches
from node_agent.errors import SpawnError, WorkspaceError
from node_agent.hub import Hub
from node_agent.journal import Entry, Journal
from node_agent.local_models import LocalModel
from node_agent.meter import control as meters
from node_agent.models import Job, Result
from node_agent.parents import Parents
from node_agent.process import OutputTail, attach, kill_escaped, signal_group
from node_agent.workspace import Workspace
from protos.contract import EndReason, ResultStatus, redact

__all__ = ["Runner"]

log = logging.getLogger(__name__)

_LOST_BEFORE_START = "the node daemon restarted before the job started; secrets are never kept on disk"


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
        recheck_models: Callable[[], Awaitable[None]] | None = None,
        output_cap: int = CAP_BYTES,
        agent_idle_s: float = 0.0,
    ) -> None:
        self.node_id = node_id
        self.node_name = node_name
        self.workspace = workspace
        self.journal = journal
        self.hub = hub
        self._slots = slots
        self.kill_grace_s = kill_grace_s
        self._local_models = local_models
        self._recheck_models = recheck_models
        self.output_cap = output_cap  # bytes of output kept per attempt while no coordinator listens
        self.parents = Parents(agent_idle_s)  # the keeper, and the llm agent host if any
        self.active: dict[str, Attempt] = {}
        self.finished: dict[str, Result] = {}  # attempt id -> result not yet acked
        self._group: asyncio.TaskGroup | None = None
        self._stopping = False
        self.closing = False  # the daemon is stopping: accept nothing new
        self._recovered: list[Entry] = []
        for entry in journal.entries():
            if entry.result is not None:
                self.finished[entry.job.attempt_id] = entry.result
            else:
                self._recovered.append(entry)

    @property
    def running(self) -> int:
        return len(self.active) + len(self._recovered)

    def resume(self, group: asyncio.TaskGroup | None = None) -> None:
        """Take back the attempts a previous daemon left unfinished (needs the loop). From
        now on every attempt's driver runs in ``group`` (without one: in the loop)."""
        self._group = group
        for entry in self._recovered:
            self._resume(entry)
        self._recovered.clear()

    def _resume(self, entry: Entry) -> None:
        job = entry.job
        proc = attach(entry.pid, entry.create_time) if entry.pid else None
        stop, detail = entry.stop, entry.stop_detail
        if job.secrets and not entry.pid and not stop:
            stop, detail = ResultStatus.LOST, _LOST_BEFORE_START
        report = meter = None
        found = meters.find(self.journal.dir(job.attempt_id)) if meters.metered(job) and entry.pid else None
        if entry.pid and proc is None:  # it ended while no daemon watched: what did it say?
            report = read_report(job, self.journal.dir(job.attempt_id), self.journal.output(job.attempt_id))
            meter = meters.read(self.journal.dir(job.attempt_id) / meters.STATE_FILE)
            if found is not None:
                found.stop()
        elif proc is not None and meters.metered(job) and found is None and not stop:
            stop, detail = ResultStatus.FAILED, meters.DOWN
        state, actions = lc.recovered(
            job.attempt_id,
            job.repo is not None,
            spawned=entry.pid > 0,
            alive=proc is not None,
            exit_code=entry.exit_code,
            stop=stop,
            stop_detail=detail,
            report=report,
            meter=meter,
        )
        a = Attempt(job, state, started_at=entry.spawned_at or time.time())
        a.meter = found if proc is not None else None
        a.backlog = Backlog.resumed(self.output_cap, entry.offset, entry.dropped, entry.marked)
        a.proc, a.spawned_at, a.reattach = proc, entry.spawned_at, proc is not None
        if entry.pid:
            a.cwd = self._cwd(job)
            a.tail = self._tail(a, entry.offset)
        log.info("resumed %s: %s%s", a.id, state.phase, " (process alive)" if proc else "")
        self._launch(a, actions)

    # --- requests ----------------------------------------------------------------------

    def start(self, job: Job) -> tuple[bool, str]:
        if job.attempt_id in self.active or job.attempt_id in self.finished:
            return True, "already known"
        if self.closing or self._stopping:
            return False, "the node is stopping"
        if self.running >= self._slots():
            return False, f"no free slot ({self.running} of {self._slots()} busy)"
        job, keys = meters.split_keys(job) if meters.metered(job) else (job, {})
        secrets = {**keys, **job.secrets}
        if keys:
            job = replace(job, secrets={**dict.fromkeys(keys, ""), **job.secrets})
        if secrets:  # the journal (and ListJobs) keep the names, never the values
            job = without_secrets(job)
        self.journal.begin(job)
        a = Attempt(job, lc.State(job.attempt_id, job.repo is not None), started_at=time.time())
        a.backlog = Backlog(self.output_cap)
        a.secrets = secrets
        self.hub.started(job.job_id, job.attempt_id, a.started_at)
        self._launch(a, [lc.Prepare()])
        return True, ""

    def cancel(self, attempt_id: str) -> bool:
        a = self.active.get(attempt_id)
        if a is None:
            return False
        a.events.put_nowait(lc.Stop(ResultStatus.CANCELLED))
        return True

    def stop_all(self, reason: ResultStatus, detail: str = "") -> int:
        """Stop every running attempt for `reason` (one of lifecycle.STOP_REASONS)."""
        for a in self.active.values():
            a.events.put_nowait(lc.Stop(reason, detail))
        return len(self.active)

    def ack(self, attempt_ids: list[str]) -> None:
        for attempt_id in attempt_ids:
            if self.finished.pop(attempt_id, None) is not None:
                self.journal.forget(attempt_id)

    def jobs(self) -> tuple[list[Job], list[Result]]:
        """What runs (secret values blanked) and the results not yet acknowledged."""
        running = [a.job for a in self.active.values()] + [e.job for e in self._recovered]
        return running, list(self.finished.values())

    def cleanup(self, run_id: str, refs: bool = False) -> tuple[int, int]:
        """Remove the worktrees of a run or job (``run_id`` may be RUN.N) but those of its
        running attempts; with ``refs``, the run's refs too, refused while one runs.
        Return (worktrees removed, refs removed)."""
        busy = sorted(a for a in self.active if a.startswith(f"{run_id}."))
        if refs and busy:
            raise WorkspaceError(f"run {run_id} still runs here ({', '.join(busy)}); its refs are kept")
        removed = self.workspace.remove_run(run_id, keep=busy)
        return removed, self.workspace.remove_run_refs(run_id) if refs else 0

    async def stop(self) -> None:
        """Stop every running attempt and journal its result as lost (not cancelled: the
        user did not ask, so the coordinator may retry it elsewhere)."""
        self._stopping = True
        self.stop_all(ResultStatus.LOST)
        tasks = [a.task for a in self.active.values() if a.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.parents.close()

    async def detach(self) -> None:
        """Let every attempt go without stopping it (a restart that keeps the jobs): the
        drivers end, the processes run on under the keeper, and the journal has what the
        next daemon needs to take them back (as after a crash)."""
        self._stopping = True
        tasks = [a.task for a in self.active.values() if a.task]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.parents.close()

    # --- the driver ----------------------------------------------------------------------

    def _launch(self, a: Attempt, actions: list[lc.Action]) -> None:
        self.active[a.id] = a
        driver = self._drive(a, actions)
        if self._group is not None:
            a.task = self._group.create_task(driver, name=a.id)
        else:
            a.task = asyncio.get_running_loop().create_task(driver, name=a.id)

    async def _drive(self, a: Attempt, actions: list[lc.Action]) -> None:
        try:
            async with asyncio.TaskGroup() as helpers:
                a.helpers = helpers
                if a.reattach:
                    self._follow(a)
                await self._steps(a, actions)
        except Exception as exc:  # a bug here, or in a helper, must not take the daemon down
            error = exc.exceptions[0] if isinstance(exc, ExceptionGroup) and exc.exceptions else exc
            log.error("attempt %s crashed", a.id, exc_info=error)
            if a.proc is not None:
                signal_group(a.proc.group, signal.SIGKILL)
            a.state, actions = lc.step(a.state, lc.Crashed(str(error)))
            try:
                for action in actions:
                    await self._perform(a, action)
            except Exception:  # nothing of an attempt may take its siblings (one task group) down
                log.exception("attempt %s could not be finished", a.id)
                self.active.pop(a.id, None)
        finally:
            for timer in a.timers:
                timer.cancel()

    async def _steps(self, a: Attempt, actions: list[lc.Action]) -> None:
        while True:
            for action in actions:
                await self._perform(a, action)
            if a.state.phase is lc.Phase.FINISHED:
                return
            event = await a.events.get()
            before = a.state.stop
            a.state, actions = lc.step(a.state, event)
            if a.state.stop is not None and a.state.stop != before:
                self._journal(self.journal.stopping, a.id, a.state.stop, a.state.stop_detail)

    async def _perform(self, a: Attempt, action: lc.Action) -> None:
        if isinstance(action, lc.Prepare):
            if a.job.repo is None and self._new_scratch(a):
                return  # a new empty directory: nothing to wait for
            self._helper(a, self._prepare(a, action.fresh))
        elif isinstance(action, lc.Spawn):
            await self._spawn(a)
        elif isinstance(action, lc.Terminate):
            if a.proc is not None:
                signal_group(a.proc.group, signal.SIGTERM)
            a.later(self.kill_grace_s, lc.GraceOver())
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

    @staticmethod
    def _helper(a: Attempt, coro: Coroutine[Any, Any, None]) -> None:
        assert a.helpers is not None, "helpers start from the driver"
        a.helpers.create_task(coro)

    def _journal(self, write: Callable[..., None], *args: object) -> bool:
        try:
            write(*args)
        except OSError as exc:  # disk full: go on; only a daemon restart would miss it
            log.error("cannot journal %s: %s", args[0], exc)
            return False
        return True

    # --- actions -------------------------------------------------------------------------

    def _cwd(self, job: Job) -> Path:
        if job.repo is not None:
            return self.workspace.worktree_path(job.attempt_id)
        return self.workspace.scratch_path(job.attempt_id)

    def _new_scratch(self, a: Attempt) -> bool:
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

    async def _prepare(self, a: Attempt, fresh: bool) -> None:
        job = a.job
        try:
            if job.repo is not None:
                if not fresh:  # a half-made worktree from before a restart
                    await asyncio.to_thread(self.workspace.remove, job.attempt_id)
                repo = job.repo
                found = None
                if job.resume_branches:
                    found = await asyncio.to_thread(
                        self.workspace.find_resume, repo.url, repo.base_commit, list(job.resume_branches)
                    )
                a.cwd = await asyncio.to_thread(
                    self.workspace.prepare,
                    repo.url,
                    repo.base_ref,
                    repo.base_commit,
                    job.branch,
                    job.attempt_id,
                    found[1] if found else "",
                    [(m.base_ref, m.base_commit) for m in job.merges],
                )
                if found:
                    line = f"[flota: resuming from {found[0]} at {found[1][:12]}]"
                    self.hub.log(job.job_id, job.attempt_id, [line])
            else:
                a.cwd = await asyncio.to_thread(self.workspace.scratch, job.attempt_id)
        except WorkspaceError as exc:
            a.events.put_nowait(lc.PrepareFailed(str(exc)))
        except OSError as exc:  # the workspace directory itself: disk full, read-only
            a.events.put_nowait(lc.PrepareFailed(f"cannot prepare the workspace: {exc.strerror or exc}"))
        else:
            a.events.put_nowait(lc.Prepared())

    async def _spawn(self, a: Attempt) -> None:
        assert a.cwd is not None
        job = a.job
        local_models = self._local_models()
        if meters.metered(job):
            local = next((m.api_base for m in local_models if m.model == job.model), "")
            env = {**job_env(job, a.cwd, self.node_id, self.node_name), **a.secrets}
            try:
                a.meter = await meters.start(job, self.journal.dir(a.id), env, local)
            except SpawnError as exc:
                a.events.put_nowait(lc.SpawnFailed(str(exc)))
                return
            job = meters.for_agent(job, a.meter)
        command = command_for(job, self.journal.dir(a.id), local_models)
        env = {**job_env(job, a.cwd, self.node_id, self.node_name), **command.env, **a.secrets}
        if a.meter is not None:
            env = meters.job_env(env, a.meter)
        keeper, argv = self.parents.for_command(command, a.cwd, env)
        try:
            given = input_file(job, a.cwd, self.journal.dir(a.id))
            if given is not None:
                env["FLOTA_INPUT"] = str(given)
            # The keeper (or host) journals the process (proc_file) as it starts it.
            files = self.journal.output(a.id), self.journal.exit_file(a.id), self.journal.proc_file(a.id)
            a.proc = await keeper.spawn(argv, a.cwd, env, *files)
        except (SpawnError, OSError) as exc:  # OSError: the journal directory, disk full
            if a.meter is not None:
                a.meter.stop()
            why = str(exc) if isinstance(exc, SpawnError) else f"cannot start the job: {exc.strerror or exc}"
            a.events.put_nowait(lc.SpawnFailed(why))
            return
        a.spawned_at = a.proc.spawned_at
        a.tail = self._tail(a, 0)
        self._follow(a)

    def _follow(self, a: Attempt) -> None:
        """The process runs: read its output, wait for its end, and time it."""
        proc, tail, meter = a.proc, a.tail, a.meter
        assert proc is not None and tail is not None
        tail.start(a.helpers)

        async def watch() -> None:
            code = await proc.wait()
            recorded = self.journal.exit_code(a.id)  # the command's own status, if it got to write it
            # Small files (a shell job's: one stat), read on the loop as the daemon always has.
            report = read_report(a.job, self.journal.dir(a.id), self.journal.output(a.id))
            figures, down = await meter.end() if meter else (None, "")
            a.events.put_nowait(lc.Exited(recorded if recorded is not None else code, report, figures, down))

        async def watch_meter(meter: meters.Meter) -> None:
            await meter.wait()
            if not meter.stopping:  # it went by itself: the job cannot go on unmetered
                a.events.put_nowait(lc.Stop(ResultStatus.FAILED, meters.DOWN))

        self._helper(a, watch())
        if meter is not None:
            self._helper(a, watch_meter(meter))
        limit = a.job.timeout_s
        if limit > 0:
            left = max(0.0, a.spawned_at + limit - time.time())
            a.later(left, lc.Stop(ResultStatus.TIMEOUT, f"timed out after {limit:g} s"))

    def _tail(self, a: Attempt, offset: int) -> OutputTail:
        job, backlog = a.job, a.backlog

        def on_lines(lines: list[str]) -> None:
            if a.secrets:
                lines = [redact(line, a.secrets) for line in lines]
            if not self.hub.listening:
                backlog.hold(lines)
                return
            if backlog.holding:  # a coordinator is back: what it missed goes first
                for batch in batches(backlog.take()):
                    self.hub.log(job.job_id, job.attempt_id, batch)
            self.hub.log(job.job_id, job.attempt_id, lines)

        def on_offset(offset: int) -> None:
            backlog.reached(offset)
            # A restart reads on from the oldest line no coordinator has seen yet.
            snapshot = backlog.snapshot()
            if snapshot is not None and self._journal(self.journal.published, a.id, *snapshot):
                backlog.journaled = snapshot
            upto = backlog.trim_to()
            if upto:
                try:
                    backlog.can_trim = self.journal.trim(a.id, upto)
                except OSError as exc:
                    log.error("cannot free the output of %s on disk: %s", a.id, exc)
                    backlog.can_trim = False
                else:
                    backlog.trimmed = upto

        return OutputTail(self.journal.output(a.id), offset, on_lines, on_offset)

    async def _commit(self, a: Attempt, status: ResultStatus) -> None:
        job = a.job
        if a.cwd is None:
            a.cwd = self._cwd(job)
        trailers = {
            "Flota-Job": job.job_id,
            "Flota-Attempt": job.attempt_id,
            "Flota-Node": f"{self.node_name} ({self.node_id})",
            "Flota-Agent": job.agent or "shell",
        }
        if job.model:
            trailers["Flota-Model"] = job.model
        title = f"flota: {job.name or job.command}"[:200]
        try:
            a.commit = await asyncio.to_thread(
                self.workspace.commit_and_push,
                a.cwd,
                job.branch,
                f"{title}\n\nstatus: {status}",
                trailers,
                allow_empty=job.allow_empty,
                ignore=job.ignore_paths,
            )
        except WorkspaceError as exc:
            a.events.put_nowait(lc.Committed(f"cannot commit the result: {exc}"))
            return
        except OSError as exc:
            a.events.put_nowait(lc.Committed(f"cannot commit the result: {exc.strerror or exc}"))
            return
        done = a.commit.pushed or a.commit.empty  # nothing changed: nothing to push, the base is the result
        a.events.put_nowait(lc.Committed("" if done else a.commit.error or "push failed"))

    async def _finish(self, a: Attempt, action: lc.Finish) -> None:
        if a.tail is not None:
            await a.tail.finish()
        held = tuple(a.backlog.take(HELD_BYTES))
        unmarked, marked = self.hub.take_gap(a.id)
        lost = (a.backlog.marked + marked + unmarked, a.backlog.marked + marked)
        result = result_of(a, action, self.node_id, time.time(), held, lost)
        self._journal(self.journal.finish, result)
        self.finished[a.id] = result
        self.active.pop(a.id, None)
        if result.reason == EndReason.MODEL_UNREACHABLE and self._recheck_models is not None:
            await self._recheck_models()  # its facts (a heartbeat) go out before its result
        self.hub.result(result)
