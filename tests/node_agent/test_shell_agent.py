"""run_shell against real processes: output streaming, exit codes, timeouts, cancel, cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
import pytest

from node_agent.agents.shell import _BATCH_LINES, ShellError, ShellOutcome, run_shell

pytestmark = pytest.mark.timeout(60)

MARK = " …[line truncated]"


class Capture:
    """An on_lines sink that remembers lines and batches, and can fire on a given line."""

    def __init__(self, on_line: Callable[[str], None] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.on_line = on_line

    def __call__(self, batch: list[str]) -> None:
        self.batches.append(list(batch))
        if self.on_line is not None:
            for line in batch:
                self.on_line(line)

    @property
    def lines(self) -> list[str]:
        return [line for batch in self.batches for line in batch]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def shell(
    command: str,
    cwd: Path,
    *,
    timeout_s: float = 30.0,
    grace_s: float = 5.0,
    sink: Capture | None = None,
    cancel: asyncio.Event | None = None,
) -> tuple[ShellOutcome, Capture, float]:
    sink = sink or Capture()
    started = time.monotonic()
    outcome = await run_shell(
        command, cwd, dict(os.environ), timeout_s, sink, cancel or asyncio.Event(), grace_s=grace_s
    )
    return outcome, sink, time.monotonic() - started


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def live_members(pgid: int) -> list[int]:
    """Processes of the group that are not zombies (a lazy init may keep zombies around)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def group_is_gone(pgid: int) -> bool:
    return wait_until(lambda: not live_members(pgid), timeout_s=5.0)


def first_int(lines: list[str]) -> int:
    return int(next(line for line in lines if line.strip().isdigit()))


def test_success_streams_lines_in_order_in_batches(tmp_path: Path) -> None:
    outcome, sink, _ = run(shell("for i in $(seq 1 300); do echo line$i; done; echo err >&2", tmp_path))
    assert outcome == ShellOutcome("success", 0, outcome.log_tail, "")
    assert sink.lines == [f"line{i}" for i in range(1, 301)] + ["err"]
    assert outcome.log_tail.splitlines() == sink.lines[-40:]
    assert all(1 <= len(batch) <= _BATCH_LINES for batch in sink.batches)
    assert len(sink.batches) < 301  # batched, not one call per line


def test_runs_in_cwd_with_given_env(tmp_path: Path) -> None:
    sink = Capture()
    outcome = run(run_shell("pwd; echo $FLOTA_X", tmp_path, {"FLOTA_X": "42"}, 10, sink, asyncio.Event()))
    assert outcome.status == "success"
    assert sink.lines == [str(tmp_path), "42"]


def test_failure_exit_code(tmp_path: Path) -> None:
    outcome, sink, _ = run(shell("echo before; exit 7", tmp_path))
    assert (outcome.status, outcome.exit_code, outcome.error) == ("failed", 7, "exit code 7")
    assert sink.lines == ["before"]


def test_killed_by_signal_is_negative(tmp_path: Path) -> None:
    outcome, _, _ = run(shell("kill -KILL $$", tmp_path))
    assert (outcome.status, outcome.exit_code) == ("failed", -signal.SIGKILL)
    assert outcome.error == "killed by signal SIGKILL"


def test_timeout_kills_children_and_grandchildren(tmp_path: Path) -> None:
    command = "echo $$; sleep 100 & sleep 100 & (sleep 100 & sleep 100 & wait) & wait"
    outcome, sink, elapsed = run(shell(command, tmp_path, timeout_s=0.5, grace_s=10.0))
    assert outcome.status == "timeout"
    assert outcome.error == "timed out after 0.5 s"
    assert outcome.exit_code == -signal.SIGTERM
    # Everything died on SIGTERM: no waiting for the grace period.
    assert elapsed < 5.0
    assert group_is_gone(first_int(sink.lines))


def test_sigterm_ignored_gets_sigkill_after_grace(tmp_path: Path) -> None:
    command = "trap '' TERM; echo $$; sleep 100 & sleep 100"
    outcome, sink, elapsed = run(shell(command, tmp_path, timeout_s=0.3, grace_s=0.7))
    assert outcome.status == "timeout"
    assert outcome.exit_code == -signal.SIGKILL
    assert 0.9 <= elapsed < 5.0
    assert group_is_gone(first_int(sink.lines))


def test_child_cleaning_up_after_sigterm_gets_the_grace(tmp_path: Path) -> None:
    # The leader dies on SIGTERM at once; its child needs a moment and must get it.
    marker = tmp_path / "cleaned"
    command = f"echo $$; sh -c 'trap \"sleep 0.3; touch {marker}; exit 0\" TERM; sleep 100 & wait'; sleep 100"
    outcome, sink, _ = run(shell(command, tmp_path, timeout_s=0.3, grace_s=5.0))
    assert outcome.status == "timeout"
    assert marker.exists()
    assert group_is_gone(first_int(sink.lines))


def test_cancel_kills_the_group(tmp_path: Path) -> None:
    async def scenario() -> tuple[ShellOutcome, Capture, float]:
        cancel = asyncio.Event()
        sink = Capture(on_line=lambda line: cancel.set() if line == "ready" else None)
        return await shell(
            "echo $$; sleep 100 & echo ready; wait", tmp_path, sink=sink, cancel=cancel, grace_s=10.0
        )

    outcome, sink, elapsed = run(scenario())
    assert (outcome.status, outcome.error) == ("cancelled", "cancelled")
    assert elapsed < 5.0
    assert group_is_gone(first_int(sink.lines))


def test_cancel_before_start_runs_nothing(tmp_path: Path) -> None:
    async def scenario() -> ShellOutcome:
        cancel = asyncio.Event()
        cancel.set()
        return await run_shell(f"touch {tmp_path}/ran", tmp_path, {}, 10, Capture(), cancel)

    assert run(scenario()).status == "cancelled"
    assert not (tmp_path / "ran").exists()


def test_caller_cancellation_kills_the_group(tmp_path: Path) -> None:
    async def scenario() -> int:
        seen: asyncio.Queue[str] = asyncio.Queue()
        sink = Capture(on_line=seen.put_nowait)
        task = asyncio.create_task(shell("echo $$; sleep 100 & sleep 100", tmp_path, sink=sink))
        pgid = int(await asyncio.wait_for(seen.get(), 10))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pgid

    assert group_is_gone(run(scenario()))


def test_background_grandchild_holding_stdout_does_not_hang(tmp_path: Path) -> None:
    outcome, sink, elapsed = run(shell("echo $$; sleep 100 & echo done", tmp_path))
    assert outcome.status == "success"
    assert sink.lines[-1] == "done"
    assert elapsed < 2.0
    assert group_is_gone(first_int(sink.lines))


def test_escaped_grandchild_holding_stdout_is_bounded(tmp_path: Path) -> None:
    # setsid leaves our process group, so killing the group cannot close its stdout.
    command = "setsid sh -c 'echo $$; exec sleep 100' & sleep 0.2; echo done"
    outcome, sink, elapsed = run(shell(command, tmp_path))
    try:
        assert outcome.status == "success"
        assert "done" in sink.lines
        assert elapsed < 5.0
    finally:
        os.kill(first_int(sink.lines), signal.SIGKILL)


def test_long_lines_are_capped(tmp_path: Path) -> None:
    command = "head -c 20000 /dev/zero | tr '\\0' x; echo; printf 'é%.0s' $(seq 1 5000); echo; echo after"
    outcome, sink, _ = run(shell(command, tmp_path))
    assert outcome.status == "success"
    long_ascii, long_utf8, after = sink.lines
    assert long_ascii == "x" * 8192 + MARK
    assert long_utf8.endswith(MARK)
    assert len(long_utf8.removesuffix(MARK).encode()) <= 8192 + 3  # a cut character becomes U+FFFD
    assert after == "after"


def test_last_line_without_newline_crlf_and_bad_utf8(tmp_path: Path) -> None:
    outcome, sink, _ = run(shell("printf 'dos\\r\\n\\377ok\\nno-newline'", tmp_path))
    assert outcome.status == "success"
    assert sink.lines == ["dos", "\ufffdok", "no-newline"]


def test_failing_sink_does_not_stop_the_command(tmp_path: Path) -> None:
    def broken(_batch: list[str]) -> None:
        raise RuntimeError("sink down")

    outcome = run(run_shell("echo a; echo b", tmp_path, dict(os.environ), 10, broken, asyncio.Event()))
    assert outcome.status == "success"
    assert outcome.log_tail == "a\nb"


def test_missing_cwd_raises_shell_error(tmp_path: Path) -> None:
    with pytest.raises(ShellError, match="cannot start"):
        run(run_shell("true", tmp_path / "missing", {}, 10, Capture(), asyncio.Event()))


def test_overhead_of_true_is_a_few_ms(tmp_path: Path) -> None:
    async def scenario() -> list[float]:
        env, cancel, times = dict(os.environ), asyncio.Event(), []
        for _ in range(200):
            started = time.perf_counter()
            outcome = await run_shell("true", tmp_path, env, 10, Capture(), cancel)
            times.append(time.perf_counter() - started)
            assert outcome.status == "success"
        return times

    # Generous bound: a shared CI box must not flake; measured ~2-3 ms here.
    assert statistics.median(run(scenario())) < 0.05
