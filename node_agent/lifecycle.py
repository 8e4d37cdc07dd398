"""One attempt's lifecycle on a node, as a pure state machine: events in, actions out.

``step(state, event) -> (state, actions)`` does no I/O; the runner performs the
actions and feeds what happens back as events. So every path (a cancel while git
prepares, a timeout during the kill grace, a daemon that restarts mid-commit) is a
table of transitions that tests walk without processes, like dask's
``worker_state_machine``.

Phases::

    preparing --Prepared--> running --Exited--> finishing --Committed--> finished
        |                     |  \\--Stop--> stopping --Exited--^   (no repo: straight on)
        \\--PrepareFailed / stopped before the start------------------------> finished

A stop has a reason, and the reason makes the status: ``cancelled`` (the user),
``timeout``, ``lost`` (the daemon is shutting down) or ``partial`` (cut off from the
coordinator too long: the work so far is pushed so a retry can resume from it). The
first reason wins. Whatever the reason, what the job wrote is committed and pushed
when it has a repository: a branch is never thrown away. A job that changed nothing
pushes no branch (unless its spec allows an empty commit): its result is the base.

This module is the only author of an attempt's outcome: the :class:`Finish` action
carries the final status, error line, exit code and reason (an ``EndReason``, the typed
word the coordinator's retry rules read), and the runner records them as they are. What
the agent said about its own run arrives with :class:`Exited` (its report, read by the
runner once the process has ended): an agent that stopped on its steps or budget turns a
failed exit into ``partial`` with the agent's reason (max_steps, budget ...: its own limit,
final), an agent's own error line replaces a bare "exit code N", and a model server it
could not reach is reason model_unreachable. A job with a budget has its metering proxy's
word too (with :class:`Exited`): a failed job whose proxy refused a call for the budget is
``partial`` with reason budget, and one whose proxy stopped by itself failed for that
(a stop with status ``failed`` too, when the daemon sees the proxy go while the job runs).
A stop for being cut off is ``partial`` with
reason cut_off (a retry can go on from it). A bug in the runner itself arrives as :class:`Crashed`
and ends the attempt as failed at once.

A restarted daemon rebuilds the state from its journal with :func:`recovered`.
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass, field, replace
from enum import StrEnum

from node_agent.models import AgentReport, Metered
from protos.contract import EndReason, ResultStatus

__all__ = [
    "Commit",
    "Committed",
    "Crashed",
    "Exited",
    "Finish",
    "GraceOver",
    "Kill",
    "Phase",
    "Prepare",
    "PrepareFailed",
    "Prepared",
    "STOP_REASONS",
    "Spawn",
    "SpawnFailed",
    "State",
    "Stop",
    "Terminate",
    "describe_exit",
    "recovered",
    "step",
]

# The reasons a stop may have; each is also the status of the attempt it stops.
STOP_REASONS = frozenset(
    {
        ResultStatus.CANCELLED,
        ResultStatus.TIMEOUT,
        ResultStatus.LOST,
        ResultStatus.PARTIAL,
        ResultStatus.FAILED,
    }
)
STOP_ERROR = {
    ResultStatus.CANCELLED: "cancelled",
    ResultStatus.LOST: "the node daemon stopped",
}
STOP_END_REASON = {ResultStatus.PARTIAL: EndReason.CUT_OFF}  # the status alone says the rest
VANISHED = "the job's process vanished without an exit status"
AGENT_STOPPED = "the agent stopped before it finished"


class Phase(StrEnum):
    PREPARING = "preparing"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHING = "finishing"
    FINISHED = "finished"


@dataclass(frozen=True)
class State:
    attempt_id: str
    has_repo: bool
    phase: Phase = Phase.PREPARING
    stop: ResultStatus | None = None  # why it is being stopped; None while nobody asked
    stop_detail: str = ""  # e.g. "timed out after 30 s"
    exit_code: int | None = None
    report: AgentReport = field(default_factory=AgentReport)  # what the agent said, once it ended
    meter: Metered | None = None  # a job with a budget: what its metering proxy counted
    meter_down: str = ""  # the line of a metering proxy that stopped by itself


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """The worktree (or scratch directory) is ready."""


@dataclass(frozen=True)
class PrepareFailed:
    error: str


@dataclass(frozen=True)
class SpawnFailed:
    error: str


@dataclass(frozen=True)
class Exited:
    """The job's process ended; ``code`` is negative for a signal, None when unknown
    (a process found again after a restart that died without writing its status).
    ``report`` is what its agent wrote about its run (empty for a plain command)."""

    code: int | None
    report: AgentReport = field(default_factory=AgentReport)
    meter: Metered | None = None
    meter_down: str = ""


@dataclass(frozen=True)
class Stop:
    reason: ResultStatus  # one of STOP_REASONS
    detail: str = ""


@dataclass(frozen=True)
class Crashed:
    """The runner failed while driving the attempt (a bug): it ends as failed, now."""

    error: str


@dataclass(frozen=True)
class GraceOver:
    """The kill grace after SIGTERM has passed."""


@dataclass(frozen=True)
class Committed:
    error: str = ""  # "" when the branch is on the remote, or the job changed nothing to push


Event = Prepared | PrepareFailed | SpawnFailed | Exited | Stop | GraceOver | Committed | Crashed

# --- actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepare:
    fresh: bool = True  # False after a restart: whatever a half-done prepare left goes first


@dataclass(frozen=True)
class Spawn:
    pass


@dataclass(frozen=True)
class Terminate:
    """SIGTERM to the job's group, and start the grace timer."""


@dataclass(frozen=True)
class Kill:
    """SIGKILL to the job's group and to any process that left it."""


@dataclass(frozen=True)
class Commit:
    status: ResultStatus  # written into the commit message: the status if the push succeeds


@dataclass(frozen=True)
class Finish:
    """The attempt is over: record exactly this (the runner adds the facts: commit,
    output, times, the report's counts)."""

    status: ResultStatus
    error: str  # one line, "" on success
    exit_code: int | None  # None: it never ran, or its status was lost
    reason: EndReason = EndReason.NONE


Action = Prepare | Spawn | Terminate | Kill | Commit | Finish


def describe_exit(code: int) -> str:
    """One line for a non-zero status, naming the signal: -N is signal N, and a shell's
    128+N (from a child shell that reported it) stands for one too."""
    number = -code if code < 0 else code - 128 if code > 128 else 0
    if number:
        with contextlib.suppress(ValueError):
            name = signal.Signals(number).name
            return f"killed by signal {name}" if code < 0 else f"killed by signal {name} (exit code {code})"
    return f"exit code {code}"


_Outcome = tuple[ResultStatus, str, EndReason]  # status, error, reason


def _outcome(state: State) -> _Outcome:
    """(status, error, reason) of an attempt whose process has ended or never started."""
    if state.stop:
        detail = state.stop_detail or STOP_ERROR.get(state.stop, state.stop)
        return state.stop, detail, STOP_END_REASON.get(state.stop, EndReason.NONE)
    code = state.exit_code
    if code == 0:
        return ResultStatus.SUCCESS, "", EndReason.NONE
    if code is None:
        return ResultStatus.FAILED, VANISHED, EndReason.NONE
    return ResultStatus.FAILED, describe_exit(code), EndReason.NONE


def _judged(state: State, status: ResultStatus, error: str, reason: EndReason) -> _Outcome:
    """The agent's word on a failure: it knows why it stopped better than its exit code;
    and the metering proxy's, above it."""
    report, meter = state.report, state.meter
    if status == ResultStatus.FAILED and state.meter_down:
        return status, state.meter_down, EndReason.NONE
    if state.stop == ResultStatus.FAILED:  # the daemon failed it (its proxy went): that says why
        return status, error, reason
    if status == ResultStatus.FAILED and report.status == ResultStatus.PARTIAL:  # its steps or budget
        return ResultStatus.PARTIAL, report.error or AGENT_STOPPED, report.reason
    if status == ResultStatus.FAILED and meter is not None and meter.refused:  # the proxy's budget
        return ResultStatus.PARTIAL, meter.refusal or AGENT_STOPPED, EndReason.BUDGET
    if status == ResultStatus.FAILED and report.status == ResultStatus.FAILED and report.error:
        return status, report.error, report.reason
    return status, error, reason


def _finish(state: State, status: ResultStatus, error: str, reason: EndReason) -> tuple[State, list[Action]]:
    status, error, reason = _judged(state, status, error, reason)
    return replace(state, phase=Phase.FINISHED), [Finish(status, error, state.exit_code, reason)]


def _ended(state: State) -> tuple[State, list[Action]]:
    """The process is gone: commit what it made, or finish at once without a repo."""
    outcome = _outcome(state)
    if state.has_repo:
        return replace(state, phase=Phase.FINISHING), [Kill(), Commit(_judged(state, *outcome)[0])]
    new, actions = _finish(state, *outcome)
    return new, [Kill(), *actions]


def step(state: State, event: Event) -> tuple[State, list[Action]]:
    phase = state.phase
    if phase == Phase.FINISHED:
        return state, []
    if isinstance(event, Crashed):
        return _finish(state, ResultStatus.FAILED, f"internal error: {event.error}", EndReason.NONE)
    if isinstance(event, Stop):
        if state.stop or phase == Phase.FINISHING:
            return state, []  # the first reason wins; a commit in progress finishes
        stopped = replace(state, stop=event.reason, stop_detail=event.detail)
        if phase == Phase.RUNNING:
            return replace(stopped, phase=Phase.STOPPING), [Terminate()]
        return stopped, []  # preparing: acted on when the preparation ends
    if isinstance(event, Prepared) and phase == Phase.PREPARING:
        if state.stop:  # stopped while git worked: the job never starts
            return _finish(state, *_outcome(state))
        return replace(state, phase=Phase.RUNNING), [Spawn()]
    if isinstance(event, PrepareFailed) and phase == Phase.PREPARING:
        return _finish(state, ResultStatus.FAILED, event.error, EndReason.NONE)
    if isinstance(event, SpawnFailed) and phase in (Phase.RUNNING, Phase.STOPPING):
        return _finish(state, ResultStatus.FAILED, event.error, EndReason.NONE)
    if isinstance(event, Exited) and phase in (Phase.RUNNING, Phase.STOPPING):
        return _ended(
            replace(
                state,
                exit_code=event.code,
                report=event.report,
                meter=event.meter,
                meter_down=event.meter_down,
            )
        )
    if isinstance(event, GraceOver) and phase == Phase.STOPPING:
        return state, [Kill()]
    if isinstance(event, Committed) and phase == Phase.FINISHING:
        if event.error:  # no branch on the remote: the attempt failed, whatever the job did
            return _finish(state, ResultStatus.FAILED, event.error, EndReason.NONE)
        return _finish(state, *_outcome(state))
    return state, []  # late or duplicate events change nothing


def recovered(
    attempt_id: str,
    has_repo: bool,
    spawned: bool,
    alive: bool,
    exit_code: int | None,
    stop: ResultStatus | None,
    stop_detail: str,
    report: AgentReport | None = None,
    meter: Metered | None = None,
) -> tuple[State, list[Action]]:
    """The state of a journaled, unfinished attempt after a daemon restart, and what to do.

    ``spawned``: its process was started; ``alive``: that very process still runs;
    ``exit_code``: what its keeper recorded, if it ended; ``report``: what its agent
    wrote then (read only when it is not alive); ``meter``: its metering proxy's count then.
    """
    state = State(attempt_id, has_repo, stop=stop, stop_detail=stop_detail)
    if not spawned:
        if stop:  # it was stopped before it started
            return _finish(state, *_outcome(state))
        return state, [Prepare(fresh=False)]
    if alive:
        if stop:  # the stop was under way: it goes on (SIGTERM again, a new grace)
            return replace(state, phase=Phase.STOPPING), [Terminate()]
        return replace(state, phase=Phase.RUNNING), []
    ended = replace(
        state, phase=Phase.RUNNING, exit_code=exit_code, report=report or AgentReport(), meter=meter
    )
    return _ended(ended)
