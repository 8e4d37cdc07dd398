"""node_agent/lifecycle.py: the attempt state machine, walked as tables, no processes.

It alone decides how an attempt ends: the tables include what the runner used to
decide after the fact (the wording of an exit status, an agent's own report)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from node_agent import lifecycle as lc
from node_agent.lifecycle import (
    Commit,
    Committed,
    Crashed,
    Exited,
    Finish,
    GraceOver,
    Kill,
    Prepare,
    Prepared,
    PrepareFailed,
    Spawn,
    SpawnFailed,
    State,
    Stop,
    Terminate,
    describe_exit,
    recovered,
    step,
)
from node_agent.meter.control import DOWN
from node_agent.models import AgentReport, Metered
from protos.contract import EndReason, ResultStatus

VANISHED = "the job's process vanished without an exit status"
STOPPED_EARLY = AgentReport(
    status=ResultStatus.PARTIAL, error="stopped after 30 steps", steps=30, reason=EndReason.MAX_STEPS
)
NO_SERVER = AgentReport(
    status=ResultStatus.FAILED,
    error="cannot reach the model server at http://127.0.0.1:9/v1: connection refused",
    reason=EndReason.MODEL_UNREACHABLE,
)
MAX_STEPS, CUT_OFF = EndReason.MAX_STEPS, EndReason.CUT_OFF
REFUSED = Metered(calls=4, refused=1, refusal="flota: budget $0.01 reached: ...")


def state(has_repo: bool = False, **kw: object) -> State:
    return replace(State("r1.1.a1", has_repo), **kw)  # type: ignore[arg-type]


def walk(start: State, *events: lc.Event) -> tuple[State, list[list[lc.Action]]]:
    """Feed events one by one; return the last state and the actions of each step."""
    current, actions = start, []
    for event in events:
        current, out = step(current, event)
        actions.append(out)
    return current, actions


# --- one step at a time -----------------------------------------------------------------

STEPS = [
    # (id, state before, event, state after, actions)
    ("prepared-spawns", state(), Prepared(), state(phase="running"), [Spawn()]),
    (
        "prepare-failed",
        state(),
        PrepareFailed("cannot fetch"),
        state(phase="finished"),
        [Finish("failed", "cannot fetch", None)],
    ),
    (
        "stop-while-preparing-waits-for-git",
        state(),
        Stop("cancelled"),
        state(stop="cancelled"),
        [],
    ),
    (
        "prepared-after-a-cancel-never-spawns",
        state(stop="cancelled"),
        Prepared(),
        state(stop="cancelled", phase="finished"),
        [Finish("cancelled", "cancelled", None)],
    ),
    (
        "prepared-after-a-timeout-never-spawns",
        state(stop="timeout", stop_detail="timed out after 5 s"),
        Prepared(),
        state(stop="timeout", stop_detail="timed out after 5 s", phase="finished"),
        [Finish("timeout", "timed out after 5 s", None)],
    ),
    (
        "prepared-after-lost-never-spawns",
        state(has_repo=True, stop="lost"),
        Prepared(),
        state(has_repo=True, stop="lost", phase="finished"),
        [Finish("lost", "the node daemon stopped", None)],
    ),
    (
        "spawn-failed",
        state(phase="running"),
        SpawnFailed("cannot start /bin/sh"),
        state(phase="finished"),
        [Finish("failed", "cannot start /bin/sh", None)],
    ),
    (
        "exit-0-without-repo-finishes",
        state(phase="running"),
        Exited(0),
        state(phase="finished", exit_code=0),
        [Kill(), Finish("success", "", 0)],
    ),
    (
        "exit-0-with-repo-commits",
        state(has_repo=True, phase="running"),
        Exited(0),
        state(has_repo=True, phase="finishing", exit_code=0),
        [Kill(), Commit("success")],
    ),
    (
        "exit-3-without-repo",
        state(phase="running"),
        Exited(3),
        state(phase="finished", exit_code=3),
        [Kill(), Finish("failed", "exit code 3", 3)],
    ),
    (
        "exit-3-with-repo-commits-failed",
        state(has_repo=True, phase="running"),
        Exited(3),
        state(has_repo=True, phase="finishing", exit_code=3),
        [Kill(), Commit("failed")],
    ),
    (
        "killed-by-a-signal",
        state(phase="running"),
        Exited(-9),
        state(phase="finished", exit_code=-9),
        [Kill(), Finish("failed", "killed by signal SIGKILL", -9)],
    ),
    (
        "no-exit-status-is-vanished",
        state(phase="running"),
        Exited(None),
        state(phase="finished"),
        [Kill(), Finish("failed", VANISHED, None)],
    ),
    (
        "cancel-while-running-terminates",
        state(phase="running"),
        Stop("cancelled"),
        state(phase="stopping", stop="cancelled"),
        [Terminate()],
    ),
    (
        "timeout-while-running-terminates",
        state(has_repo=True, phase="running"),
        Stop("timeout", "timed out after 5 s"),
        state(has_repo=True, phase="stopping", stop="timeout", stop_detail="timed out after 5 s"),
        [Terminate()],
    ),
    (
        "grace-over-kills",
        state(phase="stopping", stop="cancelled"),
        GraceOver(),
        state(phase="stopping", stop="cancelled"),
        [Kill()],
    ),
    (
        "exited-after-cancel-is-cancelled",
        state(phase="stopping", stop="cancelled"),
        Exited(143),
        state(phase="finished", stop="cancelled", exit_code=143),
        [Kill(), Finish("cancelled", "cancelled", 143)],
    ),
    (
        "exited-after-timeout-commits-as-timeout",
        state(has_repo=True, phase="stopping", stop="timeout", stop_detail="timed out after 5 s"),
        Exited(-9),
        state(
            has_repo=True, phase="finishing", stop="timeout", stop_detail="timed out after 5 s", exit_code=-9
        ),
        [Kill(), Commit("timeout")],
    ),
    (
        "exited-after-partial",
        state(phase="stopping", stop="partial", stop_detail="cut off from the coordinator"),
        Exited(0),
        state(phase="finished", stop="partial", stop_detail="cut off from the coordinator", exit_code=0),
        [Kill(), Finish("partial", "cut off from the coordinator", 0, CUT_OFF)],
    ),
    (
        "a-stop-for-being-cut-off-outranks-the-agents-own-limit",
        state(phase="stopping", stop="partial", stop_detail="cut off from the coordinator"),
        Exited(3, STOPPED_EARLY),
        state(
            phase="finished",
            stop="partial",
            stop_detail="cut off from the coordinator",
            exit_code=3,
            report=STOPPED_EARLY,
        ),
        [Kill(), Finish("partial", "cut off from the coordinator", 3, CUT_OFF)],
    ),
    (
        "first-stop-reason-wins",
        state(phase="stopping", stop="cancelled"),
        Stop("timeout", "timed out after 5 s"),
        state(phase="stopping", stop="cancelled"),
        [],
    ),
    (
        "first-stop-reason-wins-while-preparing",
        state(stop="timeout", stop_detail="timed out after 5 s"),
        Stop("cancelled"),
        state(stop="timeout", stop_detail="timed out after 5 s"),
        [],
    ),
    (
        "stop-while-finishing-is-ignored",
        state(has_repo=True, phase="finishing", exit_code=0),
        Stop("cancelled"),
        state(has_repo=True, phase="finishing", exit_code=0),
        [],
    ),
    (
        "committed",
        state(has_repo=True, phase="finishing", exit_code=0),
        Committed(),
        state(has_repo=True, phase="finished", exit_code=0),
        [Finish("success", "", 0)],
    ),
    (
        "committed-after-a-failure",
        state(has_repo=True, phase="finishing", exit_code=2),
        Committed(),
        state(has_repo=True, phase="finished", exit_code=2),
        [Finish("failed", "exit code 2", 2)],
    ),
    (
        "committed-after-a-cancel",
        state(has_repo=True, phase="finishing", stop="cancelled", exit_code=-9),
        Committed(),
        state(has_repo=True, phase="finished", stop="cancelled", exit_code=-9),
        [Finish("cancelled", "cancelled", -9)],
    ),
    (
        "commit-error-fails",
        state(has_repo=True, phase="finishing", exit_code=0),
        Committed("cannot push flota/r1/1: rejected"),
        state(has_repo=True, phase="finished", exit_code=0),
        [Finish("failed", "cannot push flota/r1/1: rejected", 0)],
    ),
    (
        "commit-error-fails-a-cancelled-job-too",
        state(has_repo=True, phase="finishing", stop="cancelled", exit_code=143),
        Committed("cannot commit the result: disk full"),
        state(has_repo=True, phase="finished", stop="cancelled", exit_code=143),
        [Finish("failed", "cannot commit the result: disk full", 143)],
    ),
    # How an exit status reads: the signal by name, also when a child shell reported it.
    (
        "exit-143-names-the-signal",
        state(phase="running"),
        Exited(143),
        state(phase="finished", exit_code=143),
        [Kill(), Finish("failed", "killed by signal SIGTERM (exit code 143)", 143)],
    ),
    (
        "an-unknown-signal-is-an-exit-code",
        state(phase="running"),
        Exited(-99),
        state(phase="finished", exit_code=-99),
        [Kill(), Finish("failed", "exit code -99", -99)],
    ),
    # The agent's report: an agent that stopped on its steps or budget is partial, and its
    # own error line says more than its exit code.
    (
        "agent-stopped-early-is-partial",
        state(phase="running"),
        Exited(1, STOPPED_EARLY),
        state(phase="finished", exit_code=1, report=STOPPED_EARLY),
        [Kill(), Finish("partial", "stopped after 30 steps", 1, MAX_STEPS)],
    ),
    (
        "agent-stopped-early-without-a-reason",
        state(phase="running"),
        Exited(1, AgentReport(status=ResultStatus.PARTIAL)),
        state(phase="finished", exit_code=1, report=AgentReport(status=ResultStatus.PARTIAL)),
        [Kill(), Finish("partial", "the agent stopped before it finished", 1)],
    ),
    (
        "agent-stopped-early-with-repo-commits-partial",
        state(has_repo=True, phase="running"),
        Exited(1, STOPPED_EARLY),
        state(has_repo=True, phase="finishing", exit_code=1, report=STOPPED_EARLY),
        [Kill(), Commit("partial")],
    ),
    (
        "committed-after-the-agent-stopped-early",
        state(has_repo=True, phase="finishing", exit_code=1, report=STOPPED_EARLY),
        Committed(),
        state(has_repo=True, phase="finished", exit_code=1, report=STOPPED_EARLY),
        [Finish("partial", "stopped after 30 steps", 1, MAX_STEPS)],
    ),
    (
        "a-commit-error-after-the-agent-stopped-early-is-still-partial",
        state(has_repo=True, phase="finishing", exit_code=1, report=STOPPED_EARLY),
        Committed("cannot push flota/r1/1: rejected"),
        state(has_repo=True, phase="finished", exit_code=1, report=STOPPED_EARLY),
        [Finish("partial", "stopped after 30 steps", 1, MAX_STEPS)],
    ),
    (
        "an-unreachable-model-server-fails-with-its-reason",
        state(phase="running"),
        Exited(1, NO_SERVER),
        state(phase="finished", exit_code=1, report=NO_SERVER),
        [Kill(), Finish("failed", NO_SERVER.error, 1, EndReason.MODEL_UNREACHABLE)],
    ),
    (
        "the-agents-error-replaces-the-exit-code",
        state(phase="running"),
        Exited(1, AgentReport(status=ResultStatus.FAILED, error="model not found")),
        state(
            phase="finished",
            exit_code=1,
            report=AgentReport(status=ResultStatus.FAILED, error="model not found"),
        ),
        [Kill(), Finish("failed", "model not found", 1)],
    ),
    (
        "an-agent-failure-without-an-error-keeps-the-exit-code",
        state(phase="running"),
        Exited(2, AgentReport(status=ResultStatus.FAILED)),
        state(phase="finished", exit_code=2, report=AgentReport(status=ResultStatus.FAILED)),
        [Kill(), Finish("failed", "exit code 2", 2)],
    ),
    (
        "a-report-does-not-change-a-success",
        state(phase="running"),
        Exited(0, STOPPED_EARLY),
        state(phase="finished", exit_code=0, report=STOPPED_EARLY),
        [Kill(), Finish("success", "", 0)],
    ),
    (
        "a-report-does-not-change-a-stop",
        state(phase="stopping", stop="timeout", stop_detail="timed out after 5 s"),
        Exited(-15, STOPPED_EARLY),
        state(
            phase="finished",
            stop="timeout",
            stop_detail="timed out after 5 s",
            exit_code=-15,
            report=STOPPED_EARLY,
        ),
        [Kill(), Finish("timeout", "timed out after 5 s", -15)],
    ),
    # A job with a budget: its metering proxy's word (node_agent.meter).
    (
        "a-failed-job-whose-proxy-refused-a-call-is-partial-for-the-budget",
        state(phase="running"),
        Exited(1, meter=REFUSED),
        state(phase="finished", exit_code=1, meter=REFUSED),
        [Kill(), Finish("partial", REFUSED.refusal, 1, EndReason.BUDGET)],
    ),
    (
        "a-refusal-does-not-change-a-success",
        state(phase="running"),
        Exited(0, meter=REFUSED),
        state(phase="finished", exit_code=0, meter=REFUSED),
        [Kill(), Finish("success", "", 0)],
    ),
    (
        "the-agents-own-budget-stop-keeps-its-words",
        state(phase="running"),
        Exited(3, STOPPED_EARLY, REFUSED),
        state(phase="finished", exit_code=3, report=STOPPED_EARLY, meter=REFUSED),
        [Kill(), Finish("partial", "stopped after 30 steps", 3, MAX_STEPS)],
    ),
    (
        "a-proxy-that-stopped-by-itself-fails-the-job-over-the-agents-words",
        state(phase="running"),
        Exited(1, NO_SERVER, Metered(calls=1), DOWN),
        state(phase="finished", exit_code=1, report=NO_SERVER, meter=Metered(calls=1), meter_down=DOWN),
        [Kill(), Finish("failed", DOWN, 1)],
    ),
    (
        "the-daemon-stops-a-job-whose-proxy-went",
        state(phase="running"),
        Stop(ResultStatus.FAILED, DOWN),
        state(phase="stopping", stop="failed", stop_detail=DOWN),
        [Terminate()],
    ),
    (
        "and-it-ends-failed-for-that",
        state(phase="stopping", stop="failed", stop_detail=DOWN),
        Exited(-15, NO_SERVER),
        state(phase="finished", stop="failed", stop_detail=DOWN, exit_code=-15, report=NO_SERVER),
        [Kill(), Finish("failed", DOWN, -15)],
    ),
    # The runner failing while it drives an attempt (a bug) ends it at once.
    (
        "crashed-while-running",
        state(phase="running"),
        Crashed("boom"),
        state(phase="finished"),
        [Finish("failed", "internal error: boom", None)],
    ),
    (
        "crashed-while-finishing",
        state(has_repo=True, phase="finishing", exit_code=0),
        Crashed("boom"),
        state(has_repo=True, phase="finished", exit_code=0),
        [Finish("failed", "internal error: boom", 0)],
    ),
]

# Events that mean nothing in a phase: late timers, duplicates, a process event after the end.
IGNORED = [
    ("grace-over-while-running", state(phase="running"), GraceOver()),
    ("grace-over-while-preparing", state(stop="cancelled"), GraceOver()),
    ("grace-over-while-finishing", state(has_repo=True, phase="finishing", stop="timeout"), GraceOver()),
    ("exited-while-preparing", state(), Exited(0)),
    ("exited-twice", state(has_repo=True, phase="finishing", exit_code=0), Exited(1)),
    ("prepared-twice", state(phase="running"), Prepared()),
    ("prepare-failed-while-running", state(phase="running"), PrepareFailed("late")),
    ("spawn-failed-while-preparing", state(), SpawnFailed("late")),
    ("committed-while-running", state(has_repo=True, phase="running"), Committed()),
    ("stop-after-finished", state(phase="finished", exit_code=0), Stop("cancelled")),
    ("exited-after-finished", state(phase="finished", stop="cancelled"), Exited(0)),
    ("committed-after-finished", state(has_repo=True, phase="finished"), Committed("x")),
    ("crashed-after-finished", state(phase="finished", exit_code=0), Crashed("late")),
]


@pytest.mark.parametrize(
    ("before", "event", "after", "actions"),
    [s[1:] for s in STEPS],
    ids=[s[0] for s in STEPS],
)
def test_step(before: State, event: lc.Event, after: State, actions: list[lc.Action]) -> None:
    assert step(before, event) == (after, actions)


@pytest.mark.parametrize(("before", "event"), [s[1:] for s in IGNORED], ids=[s[0] for s in IGNORED])
def test_ignored_events_change_nothing(before: State, event: lc.Event) -> None:
    assert step(before, event) == (before, [])


# --- whole walks -------------------------------------------------------------------------


def test_success_without_repo() -> None:
    end, actions = walk(state(), Prepared(), Exited(0))
    assert end == state(phase="finished", exit_code=0)
    assert actions == [[Spawn()], [Kill(), Finish("success", "", 0)]]
    assert not any(isinstance(a, Commit) for out in actions for a in out)


def test_failure_with_repo_commits_then_finishes() -> None:
    end, actions = walk(state(True), Prepared(), Exited(1), Committed())
    assert end == state(True, phase="finished", exit_code=1)
    assert actions == [[Spawn()], [Kill(), Commit("failed")], [Finish("failed", "exit code 1", 1)]]


def test_cancel_while_preparing_never_spawns() -> None:
    end, actions = walk(state(True), Stop("cancelled"), Stop("timeout"), Prepared(), Exited(0))
    assert end == state(True, phase="finished", stop="cancelled")
    assert actions == [[], [], [Finish("cancelled", "cancelled", None)], []]


def test_cancel_then_grace_then_kill_with_repo() -> None:
    end, actions = walk(
        state(True),
        Prepared(),
        Stop("cancelled"),
        GraceOver(),
        Stop("timeout", "timed out after 1 s"),
        Exited(-9),
        Stop("lost"),
        Committed(),
        GraceOver(),
    )
    assert end == state(True, phase="finished", stop="cancelled", exit_code=-9)
    assert actions == [
        [Spawn()],
        [Terminate()],
        [Kill()],
        [],
        [Kill(), Commit("cancelled")],
        [],
        [Finish("cancelled", "cancelled", -9)],
        [],
    ]


# --- after a restart ---------------------------------------------------------------------

RECOVERED = [
    # (id, has_repo, spawned, alive, exit_code, stop, stop_detail, state, actions)
    (
        "not-spawned-is-prepared-again",
        True,
        False,
        False,
        None,
        None,
        "",
        state(True),
        [Prepare(fresh=False)],
    ),
    (
        "not-spawned-without-repo-is-prepared-again",
        False,
        False,
        False,
        None,
        None,
        "",
        state(),
        [Prepare(fresh=False)],
    ),
    (
        "not-spawned-but-cancelled",
        True,
        False,
        False,
        None,
        "cancelled",
        "",
        state(True, phase="finished", stop="cancelled"),
        [Finish("cancelled", "cancelled", None)],
    ),
    (
        "not-spawned-but-timed-out",
        False,
        False,
        False,
        None,
        "timeout",
        "timed out after 9 s",
        state(phase="finished", stop="timeout", stop_detail="timed out after 9 s"),
        [Finish("timeout", "timed out after 9 s", None)],
    ),
    ("alive-runs-on", False, True, True, None, None, "", state(phase="running"), []),
    ("alive-with-repo-runs-on", True, True, True, None, None, "", state(True, phase="running"), []),
    (
        "alive-and-stopping-is-terminated-again",
        True,
        True,
        True,
        None,
        "cancelled",
        "",
        state(True, phase="stopping", stop="cancelled"),
        [Terminate()],
    ),
    (
        "dead-with-exit-code",
        False,
        True,
        False,
        4,
        None,
        "",
        state(phase="finished", exit_code=4),
        [Kill(), Finish("failed", "exit code 4", 4)],
    ),
    (
        "dead-with-exit-0-and-repo-commits",
        True,
        True,
        False,
        0,
        None,
        "",
        state(True, phase="finishing", exit_code=0),
        [Kill(), Commit("success")],
    ),
    (
        "dead-without-exit-code-vanished",
        False,
        True,
        False,
        None,
        None,
        "",
        state(phase="finished"),
        [Kill(), Finish("failed", VANISHED, None)],
    ),
    (
        "dead-without-exit-code-with-repo",
        True,
        True,
        False,
        None,
        None,
        "",
        state(True, phase="finishing"),
        [Kill(), Commit("failed")],
    ),
    (
        "dead-after-a-stop-keeps-the-stop-status",
        False,
        True,
        False,
        143,
        "timeout",
        "timed out after 2 s",
        state(phase="finished", stop="timeout", stop_detail="timed out after 2 s", exit_code=143),
        [Kill(), Finish("timeout", "timed out after 2 s", 143)],
    ),
]


@pytest.mark.parametrize(
    ("has_repo", "spawned", "alive", "exit_code", "stop", "detail", "expected", "actions"),
    [r[1:] for r in RECOVERED],
    ids=[r[0] for r in RECOVERED],
)
def test_recovered(
    has_repo: bool,
    spawned: bool,
    alive: bool,
    exit_code: int | None,
    stop: ResultStatus | None,
    detail: str,
    expected: State,
    actions: list[lc.Action],
) -> None:
    assert recovered("r1.1.a1", has_repo, spawned, alive, exit_code, stop, detail) == (expected, actions)


def test_recovered_running_job_then_ends_normally() -> None:
    start, _ = recovered("r1.1.a1", True, True, True, None, None, "")
    end, actions = walk(start, Exited(0), Committed())
    assert end == state(True, phase="finished", exit_code=0)
    assert actions == [[Kill(), Commit("success")], [Finish("success", "", 0)]]


def test_recovered_dead_job_is_judged_by_its_report() -> None:
    assert recovered("r1.1.a1", False, True, False, 1, None, "", STOPPED_EARLY) == (
        state(phase="finished", exit_code=1, report=STOPPED_EARLY),
        [Kill(), Finish("partial", "stopped after 30 steps", 1, MAX_STEPS)],
    )
    assert recovered("r1.1.a1", True, True, False, 1, None, "", STOPPED_EARLY) == (
        state(True, phase="finishing", exit_code=1, report=STOPPED_EARLY),
        [Kill(), Commit("partial")],
    )


def test_recovered_stopping_job_is_killed_after_the_grace() -> None:
    start, _ = recovered("r1.1.a1", False, True, True, None, ResultStatus.LOST, "")
    end, actions = walk(start, GraceOver(), Exited(-9))
    assert end == state(phase="finished", stop="lost", exit_code=-9)
    assert actions == [[Kill()], [Kill(), Finish("lost", "the node daemon stopped", -9)]]


def test_events_and_actions_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Stop("cancelled").reason = "timeout"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        state().phase = "running"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (1, "exit code 1"),
        (128, "exit code 128"),
        (130, "killed by signal SIGINT (exit code 130)"),
        (143, "killed by signal SIGTERM (exit code 143)"),
        (-9, "killed by signal SIGKILL"),
        (-15, "killed by signal SIGTERM"),
        (255, "exit code 255"),  # 128 + 127: no such signal
    ],
)
def test_describe_exit(code: int, text: str) -> None:
    assert describe_exit(code) == text
