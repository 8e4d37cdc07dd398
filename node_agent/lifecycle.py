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
when it has a repository: a branch is never thrown away.

A restarted daemon rebuilds the state from its journal with :func:`recovered`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = [
    "Commit",
    "Committed",
    "Exited",
    "Finish",
    "GraceOver",
    "Kill",
    "Prepare",
    "PrepareFailed",
    "Prepared",
    "Spawn",
    "SpawnFailed",
    "State",
    "Stop",
    "Terminate",
    "recovered",
    "step",
]

STOP_STATUS = {"cancelled": "cancelled", "timeout": "timeout", "lost": "lost", "partial": "partial"}
STOP_ERROR = {
    "cancelled": "cancelled",
    "lost": "the node daemon stopped",
}


@dataclass(frozen=True)
class State:
    attempt_id: str
    has_repo: bool
    phase: str = "preparing"  # preparing | running | stopping | finishing | finished
    stop: str = ""  # why it is being stopped; "" while nobody asked
    stop_detail: str = ""  # e.g. "timed out after 30 s"
    exit_code: int | None = None


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
    (a process found again after a restart that died without writing its status)."""

    code: int | None


@dataclass(frozen=True)
class Stop:
    reason: str  # cancelled | timeout | lost | partial
    detail: str = ""


@dataclass(frozen=True)
class GraceOver:
    """The kill grace after SIGTERM has passed."""


@dataclass(frozen=True)
class Committed:
    error: str = ""  # "" when the branch is on the remote


Event = Prepared | PrepareFailed | SpawnFailed | Exited | Stop | GraceOver | Committed

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
    status: str  # written into the commit message


@dataclass(frozen=True)
class Finish:
    status: str
    error: str
    exit_code: int | None


Action = Prepare | Spawn | Terminate | Kill | Commit | Finish


def _outcome(state: State) -> tuple[str, str]:
    """(status, error) of an attempt whose process has ended or never started."""
    if state.stop:
        error = state.stop_detail or STOP_ERROR.get(state.stop, state.stop)
        return STOP_STATUS[state.stop], error
    code = state.exit_code
    if code == 0:
        return "success", ""
    if code is None:
        return "failed", "the job's process vanished without an exit status"
    if code < 0:
        return "failed", f"killed by signal {-code}"
    return "failed", f"exit code {code}"


def _finish(state: State, status: str, error: str) -> tuple[State, list[Action]]:
    return replace(state, phase="finished"), [Finish(status, error, state.exit_code)]


def _ended(state: State) -> tuple[State, list[Action]]:
    """The process is gone: commit what it made, or finish at once without a repo."""
    status, error = _outcome(state)
    if state.has_repo:
        return replace(state, phase="finishing"), [Kill(), Commit(status)]
    new, actions = _finish(state, status, error)
    return new, [Kill(), *actions]


def step(state: State, event: Event) -> tuple[State, list[Action]]:
    phase = state.phase
    if phase == "finished":
        return state, []
    if isinstance(event, Stop):
        if state.stop or phase == "finishing":
            return state, []  # the first reason wins; a commit in progress finishes
        stopped = replace(state, stop=event.reason, stop_detail=event.detail)
        if phase == "running":
            return replace(stopped, phase="stopping"), [Terminate()]
        return stopped, []  # preparing: acted on when the preparation ends
    if isinstance(event, Prepared) and phase == "preparing":
        if state.stop:  # stopped while git worked: the job never starts
            status, error = _outcome(state)
            return _finish(state, status, error)
        return replace(state, phase="running"), [Spawn()]
    if isinstance(event, PrepareFailed) and phase == "preparing":
        return _finish(state, "failed", event.error)
    if isinstance(event, SpawnFailed) and phase in ("running", "stopping"):
        return _finish(state, "failed", event.error)
    if isinstance(event, Exited) and phase in ("running", "stopping"):
        return _ended(replace(state, exit_code=event.code))
    if isinstance(event, GraceOver) and phase == "stopping":
        return state, [Kill()]
    if isinstance(event, Committed) and phase == "finishing":
        status, error = _outcome(state)
        if event.error:
            return _finish(state, "failed", event.error)
        return _finish(state, status, error)
    return state, []  # late or duplicate events change nothing


def recovered(
    attempt_id: str,
    has_repo: bool,
    spawned: bool,
    alive: bool,
    exit_code: int | None,
    stop: str,
    stop_detail: str,
) -> tuple[State, list[Action]]:
    """The state of a journaled, unfinished attempt after a daemon restart, and what to do.

    ``spawned``: its process was started; ``alive``: that very process still runs;
    ``exit_code``: what its keeper recorded, if it ended.
    """
    state = State(attempt_id, has_repo, stop=stop, stop_detail=stop_detail)
    if not spawned:
        if stop:  # it was stopped before it started
            status, error = _outcome(state)
            return _finish(state, status, error)
        return state, [Prepare(fresh=False)]
    if alive:
        if stop:  # the stop was under way: it goes on (SIGTERM again, a new grace)
            return replace(state, phase="stopping"), [Terminate()]
        return replace(state, phase="running"), []
    return _ended(replace(state, phase="running", exit_code=exit_code))
