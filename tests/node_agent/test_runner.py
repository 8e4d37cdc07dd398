"""The job runner against real processes, real git and a real journal, including restarts.

A "daemon" here is a Runner with its Hub, Journal and Workspace, driven inside one
``asyncio.run``. A crash is simulated by leaving that ``asyncio.run`` without calling
``Runner.stop()``: the job's process lives on in its own session, and a second Runner on
the same state directory must take it back.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import psutil
import pytest

from node_agent.backlog import CAP_BYTES, END_KEPT, TRIM_STEP, dropped_marker
from node_agent.convert import job_from_proto, node_jobs, result_to_proto
from node_agent.errors import WorkspaceError
from node_agent.hub import Hub
from node_agent.journal import Entry, Journal
from node_agent.process import _BATCH_LINES, _MAX_LINE_BYTES, kill_escaped
from node_agent.runner import Runner
from node_agent.workspace import Workspace
from protos.contract import ResultStatus
from protos.flota.v1 import node_pb2, types_pb2
from tests.gitenv import GIT_ENV

pytestmark = pytest.mark.timeout(60)

MARK = " …[line truncated]"
VANISHED = "the job's process vanished without an exit status"
WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.01; done"


# --- harness -----------------------------------------------------------------------------


class Node:
    """One daemon's runner with its hub (subscribed, as a coordinator session would be)."""

    def __init__(
        self,
        root: Path,
        *,
        workspace: Workspace | None = None,
        grace: float = 0.3,
        slots: int = 8,
        recheck_models: Callable[[], Awaitable[None]] | None = None,
        output_cap: int = CAP_BYTES,
    ) -> None:
        self.journal = Journal(root / "jobs")
        self.workspace = workspace or Workspace(root / "work")
        self.hub = Hub()
        self.sub = self.hub.subscribe()
        self.events: list[node_pb2.NodeEvent] = []
        self.runner = Runner(
            "n1",
            "node-1",
            self.workspace,
            self.journal,
            self.hub,
            lambda: slots,
            grace,
            recheck_models=recheck_models,
            output_cap=output_cap,
        )

    def _drain(self) -> None:
        while not self.sub.queue.empty():
            self.events.append(self.sub.queue.get_nowait())

    def batches(self, attempt_id: str) -> list[list[str]]:
        self._drain()
        return [
            list(e.log.lines)
            for e in self.events
            if e.WhichOneof("kind") == "log" and e.log.attempt_id == attempt_id
        ]

    def lines(self, attempt_id: str) -> list[str]:
        return [line for batch in self.batches(attempt_id) for line in batch]

    def results(self, attempt_id: str) -> list[types_pb2.JobResult]:
        self._drain()
        return [
            e.result
            for e in self.events
            if e.WhichOneof("kind") == "result" and e.result.attempt_id == attempt_id
        ]

    def entry(self, attempt_id: str) -> Entry:
        return next(e for e in self.journal.entries() if e.job.attempt_id == attempt_id)

    async def until(self, predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    async def result(self, attempt_id: str, timeout_s: float = 5.0) -> types_pb2.JobResult:
        await self.until(lambda: attempt_id in self.runner.finished, f"the result of {attempt_id}", timeout_s)
        task = next((t for t in asyncio.all_tasks() if t.get_name() == attempt_id), None)
        if task is not None:
            await task  # the driver has nothing left to do
        (published,) = self.results(attempt_id)
        assert published == result_to_proto(self.runner.finished[attempt_id])
        journaled = self.entry(attempt_id).result
        assert journaled is not None and result_to_proto(journaled) == published  # journaled before published
        return published

    async def run(self, spec: types_pb2.JobSpec, timeout_s: float = 5.0) -> types_pb2.JobResult:
        assert self.runner.start(job_from_proto(spec)) == (True, "")
        return await self.result(spec.attempt_id, timeout_s)


def run(coro: object) -> types_pb2.JobResult:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture
def new_spec() -> Iterator[Callable[..., types_pb2.JobSpec]]:
    """Specs with ids of their own: kill_escaped must never reach another test's (or
    another engineer's) processes, and none of ours may outlive the test."""
    made: list[str] = []

    def make(command: str, **kw: object) -> types_pb2.JobSpec:
        run_id = f"t{uuid.uuid4().hex[:10]}"
        made.append(f"{run_id}.1.a1")
        return types_pb2.JobSpec(
            job_id=f"{run_id}.1",
            run_id=run_id,
            attempt_id=f"{run_id}.1.a1",
            agent="shell",
            command=command,
            **kw,  # type: ignore[arg-type]
        )

    yield make
    for attempt_id in made:
        kill_escaped(attempt_id)


def gone(pid: int) -> bool:
    """The process ended (a zombie counts: the container's init may reap lazily)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def all_gone(pids: list[int], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(gone(pid) for pid in pids):
            return True
        time.sleep(0.01)
    return all(gone(pid) for pid in pids)


def pids_in(lines: list[str]) -> list[int]:
    return [int(word) for line in lines for word in re.findall(r"\b\d+\b", line)]


# --- output --------------------------------------------------------------------------------


def test_output_streams_in_order_in_batches(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    node = Node(tmp_path)
    spec = new_spec(f"echo first; {WAIT_FOR_GO}; seq 1 2500; echo err >&2")

    async def scenario() -> types_pb2.JobResult:
        assert node.runner.start(job_from_proto(spec)) == (True, "")
        await node.until(lambda: node.lines(spec.attempt_id) == ["first"], "the first line")
        assert spec.attempt_id in node.runner.active  # streamed while the job runs
        (node.workspace.scratch_path(spec.attempt_id) / "go").touch()
        return await node.result(spec.attempt_id)

    result = run(scenario())
    expected = ["first", *map(str, range(1, 2501)), "err"]
    assert node.lines(spec.attempt_id) == expected
    batches = node.batches(spec.attempt_id)
    assert all(1 <= len(batch) <= _BATCH_LINES for batch in batches)
    assert len(batches) <= 10  # batched, not one event per line
    assert (result.status, result.exit_code, result.error) == ("success", 0, "")
    assert result.log_tail.splitlines() == expected[-40:]
    assert result.log_lines_lost == 0
    assert (result.job_id, result.node_id, result.branch) == (spec.job_id, "n1", "")
    assert result.started_at <= result.finished_at
    kinds = [e.WhichOneof("kind") for e in node.events]
    assert kinds[0] == "started" and kinds[-1] == "result"


def test_long_lines_last_line_crlf_and_bad_utf8(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    node = Node(tmp_path)
    spec = new_spec("head -c 20000 /dev/zero | tr '\\0' x; echo; printf 'dos\\r\\n\\377ok\\nno-newline'")
    result = run(node.run(spec))
    assert result.status == "success"
    assert node.lines(spec.attempt_id) == ["x" * _MAX_LINE_BYTES + MARK, "dos", "\ufffdok", "no-newline"]


def test_the_journal_holds_output_exit_and_proc(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    node = Node(tmp_path)
    spec = new_spec("echo hello; echo $$ > pid")
    before = time.time()
    result = run(node.run(spec))
    assert result.status == "success"
    d = node.journal.dir(spec.attempt_id)
    assert sorted(p.name for p in d.iterdir()) == ["exit", "offset", "output", "proc", "result.pb", "spec.pb"]
    assert (d / "output").read_bytes() == b"hello\n"
    assert (d / "exit").read_text() == "0\n"
    entry = node.entry(spec.attempt_id)
    assert (entry.job, entry.exit_code, entry.offset, entry.stop) == (job_from_proto(spec), 0, 6, None)
    assert entry.pid > 0 and entry.create_time > 0 and before <= entry.spawned_at <= time.time()
    # The journaled process is the command's shell itself (its keeper is its parent).
    command_pid = int((node.workspace.scratch_path(spec.attempt_id) / "pid").read_text())
    assert command_pid == entry.pid

    node.runner.ack([spec.attempt_id])
    assert not d.exists()
    assert node.runner.finished == {}


def test_output_no_coordinator_takes_keeps_its_tail_within_the_cap_on_disk(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    """Cut off from its coordinator, a node keeps the newest `cap` bytes of a chatty job's
    output, on disk too (the journal's output file is freed behind it), through a daemon
    restart; the log gets a marker, then the tail, and the result counts what was dropped."""
    cap, first, second = 1 << 20, 2_000_000, 3_000_000  # about 21 MiB printed in all
    slack = TRIM_STEP + 768 * 1024  # a trim step, a journal step, a batch, partial blocks
    a = Node(tmp_path, output_cap=cap)
    a.hub.unsubscribe(a.sub)  # no coordinator session
    spec = new_spec(f"seq 1 {first}; {WAIT_FOR_GO}; seq {first + 1} {second}")
    out = a.journal.output(spec.attempt_id)
    printed = len("".join(f"{i}\n" for i in range(1, first + 1)))

    def read_all(node: Node) -> bool:
        attempt = node.runner.active.get(spec.attempt_id)
        return attempt is not None and attempt.backlog.end == printed

    run(crash_after(a, spec, lambda: read_all(a), "the first part read"))
    assert out.stat().st_size == printed
    assert out.stat().st_blocks * 512 <= max(cap, END_KEPT) + slack
    entry = a.entry(spec.attempt_id)
    assert entry.dropped > 0 and entry.marked == 0 and entry.offset >= printed - cap - 256 * 1024

    b = Node(tmp_path, output_cap=cap)  # the restarted daemon reads on from the journal
    b.hub.unsubscribe(b.sub)

    async def scenario() -> types_pb2.JobResult:
        b.runner.resume()
        await b.until(lambda: read_all(b), "the first part read again")
        (b.workspace.scratch_path(spec.attempt_id) / "go").touch()
        peak = 0
        deadline = time.monotonic() + 30
        while spec.attempt_id not in b.runner.finished and time.monotonic() < deadline:
            peak = max(peak, out.stat().st_blocks * 512)
            await asyncio.sleep(0.01)
        assert peak <= max(cap, END_KEPT) + slack + 8 * (1 << 20)  # at most one read behind
        return result_to_proto(b.runner.finished[spec.attempt_id])

    result = run(scenario())
    assert out.stat().st_size > 20 * cap
    assert out.stat().st_blocks * 512 <= max(cap, END_KEPT) + slack
    lines = list(result.log_lines)
    kept = [int(line) for line in lines[1:]]
    assert lines[0] == dropped_marker(kept[0] - 1)
    assert kept == list(range(kept[0], second + 1))  # the newest lines, in order, none missing
    assert (result.log_lines_lost, result.log_lines_marked) == (kept[0] - 1, kept[0] - 1)
    assert 900 * 1024 <= len("\n".join(lines)) <= (1 << 20) + 200  # the result holds its MiB
    assert result.log_tail.splitlines() == [str(i) for i in range(second - 39, second + 1)]


def test_a_coordinator_back_mid_job_gets_the_marker_then_the_kept_lines(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    cap, first = 1 << 20, 1_000_000
    node = Node(tmp_path, output_cap=cap)
    node.hub.unsubscribe(node.sub)
    spec = new_spec(f"seq 1 {first}; {WAIT_FOR_GO}; echo after")
    printed = len("".join(f"{i}\n" for i in range(1, first + 1)))

    async def scenario() -> types_pb2.JobResult:
        assert node.runner.start(job_from_proto(spec)) == (True, "")
        await node.until(lambda: node.runner.active[spec.attempt_id].backlog.end == printed, "read", 20)
        node.sub = node.hub.subscribe()  # a coordinator session again
        (node.workspace.scratch_path(spec.attempt_id) / "go").touch()
        return await node.result(spec.attempt_id, timeout_s=20)

    result = run(scenario())
    lines = node.lines(spec.attempt_id)
    kept = [int(line) for line in lines[1:-1]]
    assert lines[0] == dropped_marker(kept[0] - 1) and lines[-1] == "after"
    assert kept == list(range(kept[0], first + 1))
    assert cap - 300 * 1024 <= sum(len(str(i)) + 1 for i in kept) <= cap  # the newest `cap` bytes
    assert (result.log_lines_lost, result.log_lines_marked) == (kept[0] - 1, kept[0] - 1)
    assert list(result.log_lines) == []  # all went out before the result


# --- exit status, cwd, env -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "status", "code", "error"),
    [
        ("true", "success", 0, ""),
        ("echo before; exit 7", "failed", 7, "exit code 7"),
        ("kill -KILL $$", "failed", -9, "killed by signal SIGKILL"),
        ("kill -TERM $$", "failed", -15, "killed by signal SIGTERM"),
        ("bash -c 'kill -TERM $$'; exit $?", "failed", 143, "killed by signal SIGTERM (exit code 143)"),
    ],
)
def test_exit_status(
    tmp_path: Path,
    new_spec: Callable[..., types_pb2.JobSpec],
    command: str,
    status: str,
    code: int,
    error: str,
) -> None:
    result = run(Node(tmp_path).run(new_spec(command)))
    assert (result.status, result.exit_code, result.error) == (status, code, error)


def test_job_killed_from_outside(tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]) -> None:
    """The OOM killer, or a user: the keeper records the signal like any other end."""
    node = Node(tmp_path)
    spec = new_spec("echo $$; sleep 100")

    async def scenario() -> types_pb2.JobResult:
        assert node.runner.start(job_from_proto(spec)) == (True, "")
        await node.until(lambda: node.lines(spec.attempt_id) != [], "the job to start")
        os.killpg(node.entry(spec.attempt_id).pid, signal.SIGKILL)
        return await node.result(spec.attempt_id)

    result = run(scenario())
    assert (result.status, result.exit_code) == ("failed", -signal.SIGKILL)
    assert result.error == "killed by signal SIGKILL"
    assert node.journal.exit_code(spec.attempt_id) == -signal.SIGKILL


def test_a_killed_keeper_loses_the_status_only_and_is_replaced(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    """The keeper is the parent of every job: killed, it takes no job with it, but a job
    that ends after it has no recorded status; the next job gets a new keeper."""
    node = Node(tmp_path)
    spec, after = new_spec(WAIT_FOR_GO + "; exit 3"), new_spec("exit 4")

    async def scenario() -> tuple[types_pb2.JobResult, types_pb2.JobResult]:
        assert node.runner.start(job_from_proto(spec)) == (True, "")
        await node.until(lambda: node.entry(spec.attempt_id).pid > 0, "the job to start")
        job = psutil.Process(node.entry(spec.attempt_id).pid)
        keeper = job.parent()
        assert keeper is not None and "keeper.py" in " ".join(keeper.cmdline())
        keeper.kill()
        await asyncio.sleep(0.2)
        assert job.is_running() and job.status() != psutil.STATUS_ZOMBIE  # the job runs on
        (node.workspace.scratch_path(spec.attempt_id) / "go").touch()
        first = await node.result(spec.attempt_id)
        assert node.runner.start(job_from_proto(after)) == (True, "")
        return first, await node.result(after.attempt_id)

    first, second = run(scenario())
    assert (first.status, first.error, first.exit_code) == ("failed", VANISHED, -1)
    assert (second.status, second.exit_code) == ("failed", 4)


def test_no_free_slot(tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]) -> None:
    node = Node(tmp_path, slots=1)
    first, second = new_spec(WAIT_FOR_GO), new_spec("true")

    async def scenario() -> types_pb2.JobResult:
        assert node.runner.start(job_from_proto(first)) == (True, "")
        assert node.runner.start(job_from_proto(first)) == (True, "already known")
        assert node.runner.start(job_from_proto(second)) == (False, "no free slot (1 of 1 busy)")
        await node.until(lambda: node.entry(first.attempt_id).pid > 0, "the first job to start")
        (node.workspace.scratch_path(first.attempt_id) / "go").touch()
        await node.result(first.attempt_id)
        return await node.run(second)

    assert run(scenario()).status == "success"


def test_cwd_and_env(tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]) -> None:
    node = Node(tmp_path)
    names = ["FLOTA_JOB_ID", "FLOTA_RUN_ID", "FLOTA_ATTEMPT_ID", "FLOTA_NODE_ID", "FLOTA_NODE_NAME"]
    names += ["FLOTA_WORKTREE", "MY_VAR"]
    spec = new_spec(
        "pwd; " + "; ".join(f'echo "${name}"' for name in names),
        # A job's own env may not pretend to be another attempt.
        env={"MY_VAR": "hello world", "FLOTA_ATTEMPT_ID": "someone-else"},
    )
    result = run(node.run(spec))
    assert result.status == "success"
    cwd = str(node.workspace.scratch_path(spec.attempt_id))
    assert node.lines(spec.attempt_id) == [
        cwd,
        spec.job_id,
        spec.run_id,
        spec.attempt_id,
        "n1",
        "node-1",
        cwd,
        "hello world",
    ]


def test_spawn_failure_is_a_failed_result(tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]) -> None:
    node = Node(tmp_path)
    spec = new_spec("echo never", env={"BAD": "a\0b"})
    result = run(node.run(spec))
    assert (result.status, result.exit_code) == ("failed", -1)
    assert re.fullmatch(r"cannot start /bin/\w+ in \S+: embedded null byte", result.error), result.error
    assert node.lines(spec.attempt_id) == []
    assert node.entry(spec.attempt_id).pid == 0


class BuggyScratch(Workspace):
    """A workspace with a bug: preparing raises what no caller expects."""

    def new_scratch(self, job_key: str) -> Path | None:
        return None  # off to a helper thread, where the bug is

    def scratch(self, job_key: str) -> Path:
        raise RuntimeError("a bug")


def test_a_bug_in_a_helper_is_a_failed_result_not_a_stuck_job(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    node = Node(tmp_path, workspace=BuggyScratch(tmp_path / "work"))
    spec = new_spec("echo never")
    result = run(node.run(spec))
    assert (result.status, result.error, result.exit_code) == ("failed", "internal error: a bug", -1)
    assert node.entry(spec.attempt_id).pid == 0


class MissingCwd(Workspace):
    """A scratch directory that is gone by the time the job starts."""

    def scratch(self, job_key: str) -> Path:
        return super().scratch(job_key) / "missing"

    def new_scratch(self, job_key: str) -> Path | None:
        made = super().new_scratch(job_key)
        return made / "missing" if made else None


def test_missing_cwd_is_a_failed_result(tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]) -> None:
    node = Node(tmp_path, workspace=MissingCwd(tmp_path / "work"))
    result = run(node.run(new_spec("echo never")))
    assert result.status == "failed"
    assert re.fullmatch(r"cannot start /bin/\w+ in \S+/missing: No such file or directory", result.error)


# --- stopping ------------------------------------------------------------------------------


def test_timeout_kills_children_and_grandchildren(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    node = Node(tmp_path, grace=10.0)  # they all die on SIGTERM: no waiting for the grace
    spec = new_spec("echo $$; sleep 100 & echo $!; (sleep 100 & echo $!; wait) & wait", timeout_s=0.5)
    started = time.monotonic()
    result = run(node.run(spec))
    assert time.monotonic() - started < 3.0
    assert (result.status, result.error) == ("timeout", "timed out after 0.5 s")
    pids = pids_in(node.lines(spec.attempt_id))
    assert len(pids) == 3
    assert all_gone([node.entry(spec.attempt_id).pid, *pids])
    assert node.entry(spec.attempt_id).stop == "timeout"


def test_sigterm_ignored_gets_sigkill_after_the_grace(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    node = Node(tmp_path, grace=0.5)
    spec = new_spec("trap '' TERM; echo $$; sleep 100 & echo $!; wait", timeout_s=0.3)
    started = time.monotonic()
    result = run(node.run(spec))
    elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 4.0
    assert (result.status, result.error, result.exit_code) == ("timeout", "timed out after 0.3 s", -9)
    assert all_gone([node.entry(spec.attempt_id).pid, *pids_in(node.lines(spec.attempt_id))])


def test_cancel_kills_the_group_and_a_child_that_left_it(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    node = Node(tmp_path, grace=10.0)
    spec = new_spec(
        "sleep 100 & echo child $!; setsid sh -c 'echo escaped $$; exec sleep 100' & echo ready; wait"
    )

    async def scenario() -> types_pb2.JobResult:
        assert node.runner.start(job_from_proto(spec)) == (True, "")
        await node.until(
            lambda: {"ready", "escaped"} <= {line.split()[0] for line in node.lines(spec.attempt_id)},
            "the job and its escaped child",
        )
        escaped = pids_in([line for line in node.lines(spec.attempt_id) if line.startswith("escaped")])[0]
        assert os.getsid(escaped) == escaped != os.getsid(node.entry(spec.attempt_id).pid)
        assert node.runner.cancel(spec.attempt_id)
        return await node.result(spec.attempt_id)

    started = time.monotonic()
    result = run(scenario())
    assert time.monotonic() - started < 4.0
    assert (result.status, result.error) == ("cancelled", "cancelled")
    pids = pids_in(node.lines(spec.attempt_id))
    assert len(pids) == 2
    assert all_gone([node.entry(spec.attempt_id).pid, *pids])
    assert node.entry(spec.attempt_id).stop == "cancelled"


def test_cancel_unknown_or_finished_attempt(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    node = Node(tmp_path)
    spec = new_spec("true")
    run(node.run(spec))
    assert not node.runner.cancel(spec.attempt_id)
    assert not node.runner.cancel("never-started")


class SlowPrepare(Workspace):
    """A scratch directory that takes as long as the test says (git on a slow link, or a
    big leftover to delete: a new directory is made at once, without it)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.release = threading.Event()

    def scratch(self, job_key: str) -> Path:
        self.entered.set()
        self.release.wait(10)
        return super().scratch(job_key)


def test_cancel_during_a_slow_prepare_never_starts(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    workspace = SlowPrepare(tmp_path / "work")
    node = Node(tmp_path, workspace=workspace)
    marker = tmp_path / "ran"
    spec = new_spec(f"touch {marker}")
    workspace.scratch_path(spec.attempt_id).mkdir()  # a leftover: emptied off the event loop

    async def scenario() -> types_pb2.JobResult:
        assert node.runner.start(job_from_proto(spec)) == (True, "")
        await node.until(workspace.entered.is_set, "the prepare to begin")
        assert node.runner.cancel(spec.attempt_id)
        await node.until(lambda: node.entry(spec.attempt_id).stop == "cancelled", "the stop in the journal")
        assert spec.attempt_id not in node.runner.finished  # still waiting for git
        workspace.release.set()
        return await node.result(spec.attempt_id)

    result = run(scenario())
    assert (result.status, result.error, result.exit_code) == ("cancelled", "cancelled", -1)
    assert not marker.exists()
    assert node.entry(spec.attempt_id).pid == 0
    assert not node.journal.output(spec.attempt_id).exists()


def test_daemon_stop_reports_jobs_lost(tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]) -> None:
    node = Node(tmp_path)
    spec = new_spec("echo $$; sleep 100")

    async def scenario() -> None:
        assert node.runner.start(job_from_proto(spec)) == (True, "")
        await node.until(lambda: node.lines(spec.attempt_id) != [], "the job to start")
        await node.runner.stop()
        assert node.runner.start(job_from_proto(new_spec("true"))) == (False, "the node is stopping")

    run(scenario())
    result = node.runner.finished[spec.attempt_id]
    assert (result.status, result.error) == ("lost", "the node daemon stopped")
    assert all_gone([node.entry(spec.attempt_id).pid, *pids_in(node.lines(spec.attempt_id))])


# --- restarts ------------------------------------------------------------------------------


async def crash_after(node: Node, spec: types_pb2.JobSpec, condition: Callable[[], bool], what: str) -> None:
    """Start `spec`, wait for `condition`, then return without stopping the runner: the
    asyncio.run around this ends and takes the runner's tasks with it, as a crash would."""
    assert node.runner.start(job_from_proto(spec)) == (True, "")
    await node.until(condition, what)


def test_restart_reattaches_a_running_job(tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]) -> None:
    a = Node(tmp_path)
    spec = new_spec(f"echo one; printf par; {WAIT_FOR_GO}; echo tial; echo two; exit 3")
    run(crash_after(a, spec, lambda: a.lines(spec.attempt_id) == ["one"], "the first line"))
    entry = a.entry(spec.attempt_id)
    assert psutil.Process(entry.pid).status() != psutil.STATUS_ZOMBIE  # the job outlived its daemon
    assert entry.offset == len(b"one\n")
    assert entry.result is None

    b = Node(tmp_path)
    assert b.runner.running == 1 and b.runner.finished == {}

    async def scenario() -> types_pb2.JobResult:
        b.runner.resume()
        b.runner.resume()  # a second call finds nothing left to take back
        assert list(b.runner.active) == [spec.attempt_id]
        await asyncio.sleep(0)
        assert spec.attempt_id in b.runner.active  # the process is alive: it waits for it
        (b.workspace.scratch_path(spec.attempt_id) / "go").touch()
        return await b.result(spec.attempt_id)

    result = run(scenario())
    assert (result.status, result.exit_code, result.error) == ("failed", 3, "exit code 3")
    assert a.lines(spec.attempt_id) == ["one"]
    assert b.lines(spec.attempt_id) == ["partial", "two"]  # nothing repeated, the cut line whole
    assert len(b.results(spec.attempt_id)) == 1
    assert list(b.runner.finished) == [spec.attempt_id]
    assert a.results(spec.attempt_id) == []
    assert all_gone([entry.pid])


def test_restart_after_the_job_ended_reads_the_exit_file(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    a = Node(tmp_path)
    spec = new_spec(f"echo one; {WAIT_FOR_GO}; echo two; exit 5")
    run(crash_after(a, spec, lambda: a.lines(spec.attempt_id) == ["one"], "the first line"))
    entry = a.entry(spec.attempt_id)
    (a.workspace.scratch_path(spec.attempt_id) / "go").touch()
    assert all_gone([entry.pid])  # it ended while no daemon was there
    assert a.journal.exit_code(spec.attempt_id) == 5

    b = Node(tmp_path)

    async def scenario() -> types_pb2.JobResult:
        b.runner.resume()
        return await b.result(spec.attempt_id)

    result = run(scenario())
    assert (result.status, result.exit_code, result.error) == ("failed", 5, "exit code 5")
    assert b.lines(spec.attempt_id) == ["two"]
    assert len(b.results(spec.attempt_id)) == 1


@pytest.mark.parametrize(
    ("stop", "status", "error"), [("", "failed", VANISHED), ("cancelled", "cancelled", "cancelled")]
)
def test_restart_never_kills_a_process_that_reused_the_pid(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec], stop: str, status: str, error: str
) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        journal = Journal(tmp_path / "jobs")
        spec = new_spec("sleep 100")
        journal.begin(job_from_proto(spec))
        real = psutil.Process(stranger.pid).create_time()
        journal.spawned(spec.attempt_id, stranger.pid, real - 3600.0, time.time() - 5)
        if stop:
            journal.stopping(spec.attempt_id, ResultStatus(stop), "")

        b = Node(tmp_path)

        async def scenario() -> types_pb2.JobResult:
            b.runner.resume()
            return await b.result(spec.attempt_id)

        result = run(scenario())
        assert (result.status, result.error, result.exit_code) == (status, error, -1)
        assert stranger.poll() is None
        assert not gone(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_restart_prepares_again_a_job_that_never_spawned(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    journal = Journal(tmp_path / "jobs")
    spec = new_spec("ls; echo again")
    journal.begin(job_from_proto(spec))  # the daemon died while git was preparing
    leftover = Workspace(tmp_path / "work").scratch(spec.attempt_id)
    (leftover / "half-made").touch()

    b = Node(tmp_path)

    async def scenario() -> types_pb2.JobResult:
        b.runner.resume()
        return await b.result(spec.attempt_id)

    result = run(scenario())
    assert (result.status, result.exit_code) == ("success", 0)
    assert b.lines(spec.attempt_id) == ["again"]  # in a fresh directory


def test_restart_of_a_job_stopped_before_it_spawned_runs_nothing(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    journal = Journal(tmp_path / "jobs")
    marker = tmp_path / "ran"
    spec = new_spec(f"touch {marker}")
    journal.begin(job_from_proto(spec))
    journal.stopping(spec.attempt_id, ResultStatus.CANCELLED, "")

    b = Node(tmp_path)

    async def scenario() -> types_pb2.JobResult:
        b.runner.resume()
        return await b.result(spec.attempt_id)

    result = run(scenario())
    assert (result.status, result.error) == ("cancelled", "cancelled")
    assert not marker.exists()


def test_restart_after_the_timeout_passed_stops_the_job_at_once(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    a = Node(tmp_path)
    spec = new_spec("echo $$; sleep 100 & echo $!; wait", timeout_s=30)
    run(crash_after(a, spec, lambda: len(a.lines(spec.attempt_id)) == 2, "the job to start"))
    entry = a.entry(spec.attempt_id)
    # The daemon was down for a minute: the job's 30 s are long over.
    a.journal.spawned(spec.attempt_id, entry.pid, entry.create_time, entry.spawned_at - 60)

    b = Node(tmp_path, grace=10.0)

    async def scenario() -> types_pb2.JobResult:
        b.runner.resume()
        return await b.result(spec.attempt_id, timeout_s=3.0)

    result = run(scenario())
    assert (result.status, result.error) == ("timeout", "timed out after 30 s")
    assert all_gone([entry.pid, *pids_in(a.lines(spec.attempt_id))])
    assert b.entry(spec.attempt_id).stop == "timeout"


def test_restart_goes_on_with_a_stop_that_was_under_way(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    a = Node(tmp_path)
    spec = new_spec("echo $$; sleep 100")
    run(crash_after(a, spec, lambda: len(a.lines(spec.attempt_id)) == 1, "the job to start"))
    a.journal.stopping(spec.attempt_id, ResultStatus.CANCELLED, "")  # journaled, then the daemon died
    entry = a.entry(spec.attempt_id)

    b = Node(tmp_path)

    async def scenario() -> types_pb2.JobResult:
        b.runner.resume()
        return await b.result(spec.attempt_id)

    result = run(scenario())
    assert (result.status, result.error) == ("cancelled", "cancelled")
    assert all_gone([entry.pid, *pids_in(a.lines(spec.attempt_id))])


def test_restart_keeps_results_not_yet_acknowledged(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    a = Node(tmp_path)
    spec = new_spec("exit 2")
    first = run(a.run(spec))
    b = Node(tmp_path)
    assert {k: result_to_proto(r) for k, r in b.runner.finished.items()} == {spec.attempt_id: first}
    assert b.runner.running == 0
    assert b.runner.start(job_from_proto(spec)) == (True, "already known")


# --- with a repository ---------------------------------------------------------------------

BASE_REF = "refs/flota/base/r1"


def git(*args: str, cwd: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, str]:
    """A local bare remote with one commit at BASE_REF: (its path, that commit)."""
    src, bare = tmp_path / "src", tmp_path / "remote.git"
    git("init", "-q", "-b", "main", str(src), cwd=tmp_path)
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    (src / "a.txt").write_text("a\n")
    git("add", "-A", cwd=src)
    git("commit", "-q", "-m", "base", cwd=src)
    git("push", "-q", str(bare), f"HEAD:{BASE_REF}", cwd=src)
    return bare, git("rev-parse", "HEAD", cwd=src).strip()


def repo_spec(
    new_spec: Callable[..., types_pb2.JobSpec], remote: tuple[Path, str], command: str
) -> types_pb2.JobSpec:
    bare, base = remote
    spec = new_spec(command)
    spec.repo.CopyFrom(types_pb2.RepoSpec(url=str(bare), base_ref=BASE_REF, base_commit=base))
    spec.branch = f"flota/{spec.run_id}/1"
    return spec


def test_repo_success_pushes_the_branch(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec], remote: tuple[Path, str]
) -> None:
    node = Node(tmp_path)
    spec = repo_spec(new_spec, remote, 'echo hello > out.txt; echo "$FLOTA_WORKTREE"')
    result = run(node.run(spec))
    bare, base = remote
    assert (result.status, result.exit_code, result.error) == ("success", 0, "")
    assert (result.branch, result.base_commit) == (spec.branch, base)
    assert list(result.files_modified) == ["out.txt"]
    assert (result.insertions, result.deletions) == (1, 0)
    assert git("rev-parse", f"refs/heads/{spec.branch}", cwd=bare).strip() == result.head_commit
    assert git("show", f"{spec.branch}:out.txt", cwd=bare) == "hello\n"
    message = git("log", "-1", "--format=%B", spec.branch, cwd=bare)
    assert "status: success" in message
    assert f"Flota-Attempt: {spec.attempt_id}" in message
    assert node.lines(spec.attempt_id) == [str(node.workspace.worktree_path(spec.attempt_id))]


@pytest.mark.parametrize("allow_empty", [False, True])
def test_repo_job_that_changed_nothing_succeeds_and_pushes_only_when_asked(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec], remote: tuple[Path, str], allow_empty: bool
) -> None:
    node = Node(tmp_path)
    spec = repo_spec(new_spec, remote, "echo 'the answer is 42, no file needed'")
    spec.allow_empty = allow_empty
    result = run(node.run(spec))
    bare, base = remote
    assert (result.status, result.exit_code, result.error) == ("success", 0, "")
    assert (result.base_commit, list(result.files_modified)) == (base, [])
    on_remote = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", f"refs/heads/{spec.branch}"],
        cwd=bare,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if allow_empty:
        assert result.branch == spec.branch and on_remote == result.head_commit
        assert git("rev-parse", f"{spec.branch}^{{tree}}", cwd=bare) == git(
            "rev-parse", f"{base}^{{tree}}", cwd=bare
        )
    else:
        assert (result.branch, result.head_commit, on_remote) == ("", "", "")


def test_repo_cancel_keeps_the_worktree_and_pushes_the_branch(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec], remote: tuple[Path, str]
) -> None:
    node = Node(tmp_path)
    spec = repo_spec(new_spec, remote, "echo half > wip.txt; echo ready; sleep 100")

    async def scenario() -> types_pb2.JobResult:
        assert node.runner.start(job_from_proto(spec)) == (True, "")
        await node.until(lambda: node.lines(spec.attempt_id) == ["ready"], "the job to be ready")
        assert node.runner.cancel(spec.attempt_id)
        return await node.result(spec.attempt_id)

    result = run(scenario())
    bare, _ = remote
    assert (result.status, result.error) == ("cancelled", "cancelled")
    assert result.branch == spec.branch
    assert git("show", f"{spec.branch}:wip.txt", cwd=bare) == "half\n"
    assert "status: cancelled" in git("log", "-1", "--format=%B", spec.branch, cwd=bare)
    worktree = node.workspace.worktree_path(spec.attempt_id)
    assert (worktree / "wip.txt").read_text() == "half\n"


def test_cleanup_spares_a_running_attempt_and_its_refs(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec], remote: tuple[Path, str]
) -> None:
    """Cleanup by run or by job (RUN.N, as the coordinator asks one job at a time) keeps a
    running attempt's worktree; deleting the run's refs is refused while it runs."""
    node = Node(tmp_path)
    spec = repo_spec(new_spec, remote, "echo ready; sleep 100")
    worktree = node.workspace.worktree_path(spec.attempt_id)
    mirror = node.workspace.mirror_path(remote[0].as_posix())

    async def scenario() -> types_pb2.JobResult:
        assert node.runner.start(job_from_proto(spec)) == (True, "")
        await node.until(lambda: node.lines(spec.attempt_id) == ["ready"], "the job to be ready")
        assert node.runner.cleanup(spec.job_id) == (0, 0)
        assert node.runner.cleanup(spec.run_id) == (0, 0)
        assert worktree.is_dir()
        with pytest.raises(WorkspaceError, match="still runs here"):
            node.runner.cleanup(spec.run_id, refs=True)
        assert node.runner.cancel(spec.attempt_id)
        return await node.result(spec.attempt_id)

    assert run(scenario()).status == "cancelled"
    refs = git("--git-dir", str(mirror), "for-each-ref", "--format=%(refname)", cwd=mirror).split()
    assert f"refs/heads/{spec.branch}" in refs and BASE_REF in refs
    assert node.runner.cleanup(spec.run_id, refs=True) == (1, 1)  # its worktree and its branch
    assert not worktree.exists()
    left = git("--git-dir", str(mirror), "for-each-ref", "--format=%(refname)", cwd=mirror).split()
    assert left == [BASE_REF]  # the base ref is another run's here (tests share BASE_REF)


def test_repo_push_failure_is_a_failed_result(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec], remote: tuple[Path, str]
) -> None:
    node = Node(tmp_path)
    spec = repo_spec(new_spec, remote, "echo x > x.txt")
    bare, base = remote
    # Someone else's commit is already on the branch: a push without force is rejected.
    git("update-ref", f"refs/heads/{spec.branch}", base, cwd=bare)
    other = git("commit-tree", "-m", "other", f"{base}^{{tree}}", cwd=bare).strip()
    git("update-ref", f"refs/heads/{spec.branch}", other, cwd=bare)
    result = run(node.run(spec))
    assert result.status == "failed"
    assert "rejected" in result.error
    assert result.branch == "" and result.head_commit != ""


def test_repo_restart_before_spawn_prepares_a_fresh_worktree(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec], remote: tuple[Path, str]
) -> None:
    bare, base = remote
    spec = repo_spec(new_spec, remote, "ls; echo made > made.txt")
    Journal(tmp_path / "jobs").begin(spec)
    # The daemon died right after git made the worktree, before the job started.
    half = Workspace(tmp_path / "work").prepare(str(bare), BASE_REF, base, spec.branch, spec.attempt_id)
    (half / "stray.txt").write_text("left by a half-done prepare\n")

    b = Node(tmp_path)

    async def scenario() -> types_pb2.JobResult:
        b.runner.resume()
        return await b.result(spec.attempt_id)

    result = run(scenario())
    assert (result.status, result.branch) == ("success", spec.branch)
    assert b.lines(spec.attempt_id) == ["a.txt"]
    assert git("ls-tree", "--name-only", spec.branch, cwd=bare).split() == ["a.txt", "made.txt"]


def test_repo_restart_after_the_job_ended_commits_its_work(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec], remote: tuple[Path, str]
) -> None:
    a = Node(tmp_path)
    spec = repo_spec(new_spec, remote, f"echo started; {WAIT_FOR_GO}; echo done > done.txt")
    run(crash_after(a, spec, lambda: a.lines(spec.attempt_id) == ["started"], "the job to start"))
    entry = a.entry(spec.attempt_id)
    (a.workspace.worktree_path(spec.attempt_id) / "go").touch()
    assert all_gone([entry.pid])

    b = Node(tmp_path)

    async def scenario() -> types_pb2.JobResult:
        b.runner.resume()
        return await b.result(spec.attempt_id)

    result = run(scenario())
    bare, _ = remote
    assert (result.status, result.exit_code, result.branch) == ("success", 0, spec.branch)
    assert git("show", f"{spec.branch}:done.txt", cwd=bare) == "done\n"


def test_secrets_reach_the_env_are_redacted_and_never_journaled(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    node = Node(tmp_path)
    value = "sk-" + uuid.uuid4().hex
    spec = new_spec('echo "k=$API_KEY"; printf %s "$API_KEY" | wc -c; echo "$API_KEY" >&2; exit 1')
    spec.secrets["API_KEY"] = value

    async def scenario() -> types_pb2.JobResult:
        assert node.runner.start(job_from_proto(spec)) == (True, "")
        # While it runs, neither the journal nor ListJobs holds the value.
        journaled = node.entry(spec.attempt_id).job
        assert dict(journaled.secrets) == {"API_KEY": ""}
        assert all(dict(j.spec.secrets) in ({}, {"API_KEY": ""}) for j in node_jobs(*node.runner.jobs()))
        return await node.result(spec.attempt_id)

    result = run(scenario())
    assert node.lines(spec.attempt_id) == ["k=[secret API_KEY]", str(len(value)), "[secret API_KEY]"]
    assert value not in result.log_tail and "[secret API_KEY]" in result.log_tail
    spec_bytes = (node.journal.dir(spec.attempt_id) / "spec.pb").read_bytes()
    assert value.encode() not in spec_bytes


def test_a_restart_before_the_start_gives_up_a_job_with_secrets(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    """The values were only in the old daemon's memory: the job cannot start, so it is
    reported lost (the coordinator retries it with the values)."""
    spec = new_spec("true")
    spec.secrets["API_KEY"] = ""  # as journaled
    journal = Journal(tmp_path / "jobs")
    journal.begin(job_from_proto(spec))
    node = Node(tmp_path)

    async def scenario() -> types_pb2.JobResult:
        node.runner.resume()
        return await node.result(spec.attempt_id)

    result = run(scenario())
    assert result.status == "lost"
    assert "secrets are never kept on disk" in result.error


def test_a_job_that_cannot_reach_its_model_server_has_the_node_look_at_its_servers_first(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec]
) -> None:
    # The real llm agent against a port that refuses: the node looks at its local model
    # servers again (here: a heartbeat saying so) before the result goes out, so the
    # coordinator no longer sends the retry to a node whose own server is gone.
    spec = new_spec("", model="openai/fake", prompt="hi", api_base="http://127.0.0.1:9/v1")
    spec.agent = "llm"
    published_before: list[list[str]] = []

    async def main() -> types_pb2.JobResult:
        async def recheck() -> None:
            node._drain()
            published_before.append([str(e.WhichOneof("kind")) for e in node.events])
            node.hub.publish(heartbeat=types_pb2.NodeInfo(name="node-1"))

        node = Node(tmp_path, recheck_models=recheck)
        result = await node.run(spec, timeout_s=40)
        kinds = [str(e.WhichOneof("kind")) for e in node.events if e.WhichOneof("kind") != "log"]
        assert kinds == ["started", "heartbeat", "result"]
        return result

    result = run(main())
    assert (result.status, result.reason) == ("failed", "model_unreachable")
    assert result.error == "cannot reach the model server at http://127.0.0.1:9/v1: connection refused"
    assert len(published_before) == 1 and "result" not in published_before[0]
