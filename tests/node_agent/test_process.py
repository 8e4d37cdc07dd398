"""node_agent/process.py and keeper.py against real processes: the keeper, attach,
the output tail, kills."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from node_agent.commandline import SHELL
from node_agent.errors import SpawnError
from node_agent.keeper import boot_time, create_time
from node_agent.lifecycle import describe_exit
from node_agent.process import (
    _BATCH_LINES,
    _KEEPER,
    _MAX_LINE_BYTES,
    JobProcess,
    KeeperClient,
    OutputTail,
    attach,
    kill_escaped,
    signal_group,
)

pytestmark = pytest.mark.timeout(60)

MARK = " …[line truncated]"
T = TypeVar("T")


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def gone(pid: int) -> bool:
    """The process ended (a zombie counts: an init that reaps lazily may keep it a while)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def keeper_of(proc: JobProcess) -> psutil.Process:
    """The keeper that started a running job: its parent."""
    keeper = psutil.Process(proc.pid).parent()
    assert keeper is not None and "keeper.py" in " ".join(keeper.cmdline())
    return keeper


class Job:
    """One daemon's keeper on one event loop, and the paths of one job: a cwd, its output
    file and its exit file."""

    def __init__(self, root: Path) -> None:
        self.cwd = root / "cwd"
        self.cwd.mkdir()
        self.output = root / "output"
        self.exit = root / "exit"
        self.attempt_id = f"t-{uuid.uuid4().hex[:12]}"
        self.env = {**os.environ, "FLOTA_ATTEMPT_ID": self.attempt_id}
        self.loop = asyncio.new_event_loop()
        self.keeper = KeeperClient()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def spawn(self, command: str, **paths: Any) -> JobProcess:
        where = {"cwd": self.cwd, "output": self.output, "exit_file": self.exit, **paths}
        env = paths.get("env", self.env)
        argv = [SHELL, "-c", command]
        return self.run(self.keeper.spawn(argv, where["cwd"], env, where["output"], where["exit_file"]))

    def wait(self, proc: JobProcess) -> int | None:
        return self.run(asyncio.wait_for(proc.wait(), 10))

    def lines(self) -> list[str]:
        return self.output.read_text(errors="replace").splitlines()

    def close(self) -> None:
        self.run(self.keeper.close())
        self.loop.close()


@pytest.fixture
def job(tmp_path: Path) -> Iterator[Job]:
    j = Job(tmp_path)
    yield j
    kill_escaped(j.attempt_id)  # nothing a test started outlives it
    j.close()


# --- the keeper --------------------------------------------------------------------------


def test_runs_in_cwd_with_exactly_the_env_and_records_its_status(job: Job) -> None:
    job.env = {"PATH": os.environ["PATH"], "FLOTA_X": "42"}
    proc = job.spawn("pwd; echo $FLOTA_X; echo ${HOME:-no-home}; echo err >&2; exit 7")
    assert job.wait(proc) == 7
    assert job.lines() == [str(job.cwd), "42", "no-home", "err"]
    assert job.exit.read_text() == "7\n"


def test_the_command_is_the_process_a_session_and_group_of_its_own(job: Job) -> None:
    proc = job.spawn("echo $$; sleep 100")
    try:
        assert wait_until(lambda: len(job.lines()) == 1)
        assert int(job.lines()[0]) == proc.pid  # no wrapper: `kill $$` ends the job
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)
        assert os.getpgid(proc.pid) == proc.group == proc.pid
        keeper = keeper_of(proc)
        assert keeper.ppid() == os.getpid()
        assert os.getsid(keeper.pid) == keeper.pid  # out of the daemon's session and the job's group
        assert keeper.cwd() == "/"  # it may outlive us: it holds no directory busy
        fds = Path(f"/proc/{keeper.pid}/fd")
        kinds = sorted(os.readlink(fd).split(":")[0] for fd in fds.iterdir() if int(fd.name) > 2)
        assert kinds == ["anon_inode", "anon_inode", "socket"]  # epoll, the job's pidfd, its socket
        assert proc.create_time == psutil.Process(proc.pid).create_time()
    finally:
        signal_group(proc.group, signal.SIGKILL)
    assert job.wait(proc) == -signal.SIGKILL
    assert job.exit.read_text() == "-9\n"


def test_output_is_appended_to_the_file(job: Job) -> None:
    job.output.write_bytes(b"from before\n")
    assert job.wait(job.spawn("echo now")) == 0
    assert job.lines() == ["from before", "now"]


def test_command_killed_by_a_signal_is_minus_n(job: Job) -> None:
    assert job.wait(job.spawn("kill -KILL $$")) == -signal.SIGKILL
    assert job.exit.read_text() == "-9\n"
    assert describe_exit(-9) == "killed by signal SIGKILL"


def test_sigterm_to_the_group_leaves_the_status(job: Job) -> None:
    proc = job.spawn("echo started; sleep 100")
    assert wait_until(lambda: job.lines() == ["started"])
    signal_group(proc.group, signal.SIGTERM)
    assert job.wait(proc) == -signal.SIGTERM
    assert job.exit.read_text() == "-15\n"


def test_many_jobs_at_once_each_get_their_own_status(job: Job, tmp_path: Path) -> None:
    async def all_of_them() -> list[int | None]:
        procs = await asyncio.gather(
            *(
                job.keeper.spawn(
                    [SHELL, "-c", f"while [ ! -e go ]; do sleep 0.01; done; exit {i}"],
                    job.cwd,
                    job.env,
                    tmp_path / f"out{i}",
                    tmp_path / f"exit{i}",
                )
                for i in range(40)
            )
        )
        assert len({p.pid for p in procs}) == 40
        assert len({psutil.Process(p.pid).ppid() for p in procs}) == 1  # one keeper serves them all
        (job.cwd / "go").touch()
        return list(await asyncio.gather(*(p.wait() for p in procs)))

    assert job.run(all_of_them()) == list(range(40))
    assert [(tmp_path / f"exit{i}").read_text() for i in range(40)] == [f"{i}\n" for i in range(40)]


def test_the_keeper_outlives_its_daemon_and_still_records_the_status(job: Job) -> None:
    """A daemon that dies (here: its end of the socket closes) leaves its jobs running;
    the keeper writes their status when they end, then leaves."""
    proc = job.spawn("while [ ! -e go ]; do sleep 0.01; done; exit 5")
    keeper = keeper_of(proc)
    job.run(job.keeper.close())  # the daemon is gone (its keeper stays for the job)
    assert keeper.is_running() and keeper.status() != psutil.STATUS_ZOMBIE
    found = attach(proc.pid, proc.create_time)  # the next daemon finds the job again
    assert found is not None
    (job.cwd / "go").touch()
    assert job.wait(found) is None  # not its child: the file says
    assert job.exit.read_text() == "5\n"
    assert wait_until(lambda: gone(keeper.pid))  # its last job ended: the keeper left


def test_a_killed_keeper_takes_no_job_with_it_and_is_replaced(job: Job) -> None:
    proc = job.spawn("while [ ! -e go ]; do sleep 0.01; done; exit 5")
    keeper = keeper_of(proc)
    keeper.kill()
    keeper.wait(5)
    assert psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE  # the job runs on
    (job.cwd / "go").touch()
    assert job.wait(proc) is None  # ended with nobody to record its status
    assert not job.exit.exists()
    second = job.spawn("sleep 0.3; exit 3", exit_file=job.cwd / "exit2")
    assert keeper_of(second).pid != keeper.pid
    assert job.wait(second) == 3


def test_close_without_jobs_ends_the_keeper(job: Job) -> None:
    proc = job.spawn("sleep 0.2")
    keeper = keeper_of(proc)
    assert job.wait(proc) == 0
    job.run(job.keeper.close())
    assert not keeper.is_running()  # reaped: no zombie left behind
    assert job.wait(job.spawn("exit 2")) == 2  # a later spawn starts a new one


def test_the_wire_and_a_kernel_without_pidfd(tmp_path: Path) -> None:
    """The keeper on its own, spoken to line by line as the daemon does, on a Python
    whose os has no pidfd_open (Linux < 5.3): a thread waits for each job instead."""
    ours, theirs = socket.socketpair()
    start = "import os, runpy, sys; del os.pidfd_open; sys.argv[:1] = []; "
    start += "runpy.run_path(sys.argv[0], run_name='__main__')"
    keeper = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", start, str(_KEEPER), str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    wire = ours.makefile("rwb", buffering=0)
    try:
        for i, (cwd, code) in enumerate([(tmp_path, 6), (tmp_path / "missing", None)]):
            request = {"id": i, "argv": ["/bin/sh", "-c", f"exit {code}"], "cwd": str(cwd), "env": {}}
            request |= {"output": str(tmp_path / "out"), "exit": str(tmp_path / "exit")}
            request["proc"] = str(tmp_path / "proc")
            wire.write(json.dumps(request).encode() + b"\n")
            reply = json.loads(wire.readline())
            if code is None:
                assert reply == {"id": i, "error": "No such file or directory"}
                continue
            assert reply["id"] == i and reply["create_time"] > 0, reply
            journaled = f"{reply['pid']} {reply['create_time']!r} {reply['spawned_at']!r}"
            assert (tmp_path / "proc").read_text() == journaled  # Journal.spawned's format
            assert json.loads(wire.readline()) == {"ended": reply["pid"], "code": code}
            assert (tmp_path / "exit").read_text() == f"{code}\n"
        wire.write(b"not json\n")
        assert json.loads(wire.readline())["error"].startswith("bad request")
    finally:
        wire.close()
        ours.close()  # the daemon has gone, no job runs: the keeper leaves
    assert keeper.wait(10) == 0


def test_a_request_sent_just_before_the_daemon_died_still_runs_and_is_journaled(tmp_path: Path) -> None:
    """The daemon writes its request and dies before the reply: the keeper still starts
    the job and journals its process, so the next daemon finds it (and never starts it twice)."""
    ours, theirs = socket.socketpair()
    keeper = subprocess.Popen(
        [sys.executable, "-I", "-S", str(_KEEPER), str(theirs.fileno())], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    request = {"id": 1, "argv": ["/bin/sh", "-c", "while [ ! -e go ]; do sleep 0.01; done; exit 3"]}
    request |= {"cwd": str(tmp_path), "env": {"PATH": os.environ["PATH"]}, "output": str(tmp_path / "out")}
    request |= {"exit": str(tmp_path / "exit"), "proc": str(tmp_path / "proc")}
    ours.sendall(json.dumps(request).encode() + b"\n")
    ours.close()  # dead before any reply
    assert wait_until(lambda: (tmp_path / "proc").exists())
    pid, created, _ = (tmp_path / "proc").read_text().split()
    found = attach(int(pid), float(created))
    assert found is not None
    (tmp_path / "go").touch()
    assert asyncio.run(asyncio.wait_for(found.wait(), 10)) is None
    assert (tmp_path / "exit").read_text() == "3\n"
    assert keeper.wait(10) == 0  # its last job ended and its daemon is gone


def test_create_time_is_the_one_psutil_computes() -> None:
    proc = subprocess.Popen(["sleep", "10"])
    try:
        assert create_time(proc.pid, boot_time()) == psutil.Process(proc.pid).create_time()
    finally:
        proc.kill()
        proc.wait()
    assert create_time(proc.pid, boot_time()) == 0.0


def test_missing_cwd_is_a_shell_error(job: Job) -> None:
    with pytest.raises(SpawnError, match=r"^cannot start /bin/\w+ in .*/missing: No such file or directory$"):
        job.spawn("true", cwd=job.cwd / "missing")


def test_nul_in_the_environment_is_a_shell_error(job: Job) -> None:
    with pytest.raises(SpawnError, match="embedded null byte"):
        job.spawn("true", env={**job.env, "BAD": "a\0b"})
    assert job.wait(job.spawn("exit 4")) == 4  # the keeper goes on


def test_unwritable_output_is_a_shell_error(job: Job) -> None:
    with pytest.raises(SpawnError, match="cannot start"):
        job.spawn("true", output=job.cwd / "no" / "output")


# --- finding a job again ------------------------------------------------------------------


def test_attach_finds_the_same_process_and_waits_for_it(job: Job) -> None:
    proc = job.spawn("while [ ! -e go ]; do sleep 0.01; done; exit 4")
    found = attach(proc.pid, proc.create_time)
    assert found is not None
    assert (found.pid, found.group) == (proc.pid, proc.pid)

    async def scenario() -> tuple[int | None, int | None]:
        waiting = asyncio.ensure_future(found.wait())
        await asyncio.sleep(0)
        assert not waiting.done()
        (job.cwd / "go").touch()
        return await asyncio.wait_for(waiting, 10), await proc.wait()

    assert job.run(scenario()) == (None, 4)  # not its child: the file says
    assert job.exit.read_text() == "4\n"
    assert attach(proc.pid, proc.create_time) is None  # reaped


def test_attach_refuses_a_process_started_at_another_time() -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        created = psutil.Process(stranger.pid).create_time()
        assert attach(stranger.pid, created) is not None
        assert attach(stranger.pid, created + 1.0) is None
        assert attach(stranger.pid, 0.0) is None
    finally:
        stranger.kill()
        stranger.wait()
    assert attach(stranger.pid, created) is None


# --- reading the output -------------------------------------------------------------------


class Sink:
    """Remembers each batch and the offset reported after it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.offsets: list[int] = []

    def on_lines(self, batch: list[str]) -> None:
        self.batches.append(list(batch))

    def on_offset(self, offset: int) -> None:
        self.offsets.append(offset)

    @property
    def lines(self) -> list[str]:
        return [line for batch in self.batches for line in batch]


def read_all(path: Path, offset: int = 0) -> tuple[OutputTail, Sink]:
    sink = Sink()
    tail = OutputTail(path, offset, sink.on_lines, sink.on_offset)
    asyncio.run(tail.finish())
    return tail, sink


def test_tail_batches_lines_in_order_and_keeps_the_last_40(tmp_path: Path) -> None:
    out = tmp_path / "output"
    lines = [f"line{i}" for i in range(1, 2501)]
    out.write_text("".join(f"{line}\n" for line in lines))
    tail, sink = read_all(out)
    assert sink.lines == lines
    assert [len(b) for b in sink.batches] == [_BATCH_LINES, _BATCH_LINES, 500]
    assert list(tail.tail) == lines[-40:]
    assert tail.offset == out.stat().st_size


def test_offset_is_just_past_the_lines_delivered(tmp_path: Path) -> None:
    """A restart resumes at the reported offset: it must never be ahead of what went out,
    or lines are lost, nor behind it, or lines are repeated."""
    out = tmp_path / "output"
    data = "".join(f"line{i}\n" for i in range(2500)).encode()
    out.write_bytes(data)
    _, sink = read_all(out)
    delivered = 0
    for batch, offset in zip(sink.batches, sink.offsets, strict=True):
        delivered += sum(len(line) + 1 for line in batch)
        assert offset == delivered
    assert sink.offsets[-1] == len(data)


def test_long_lines_are_capped(tmp_path: Path) -> None:
    out = tmp_path / "output"
    out.write_bytes(b"x" * 20000 + b"\n" + "é".encode() * 5000 + b"\nafter\n")
    _, sink = read_all(out)
    long_ascii, long_utf8, after = sink.lines
    assert long_ascii == "x" * _MAX_LINE_BYTES + MARK
    assert long_utf8.endswith(MARK)
    assert len(long_utf8.removesuffix(MARK).encode()) <= _MAX_LINE_BYTES + 3  # a cut character: U+FFFD
    assert after == "after"


def test_last_line_without_newline_crlf_and_bad_utf8(tmp_path: Path) -> None:
    out = tmp_path / "output"
    out.write_bytes(b"dos\r\n\xffok\n\nno-newline")
    tail, sink = read_all(out)
    assert sink.lines == ["dos", "\ufffdok", "", "no-newline"]
    assert sink.offsets[-1] == tail.offset == len(out.read_bytes())


def test_resuming_at_the_offset_repeats_nothing_and_rereads_a_partial_line(tmp_path: Path) -> None:
    out = tmp_path / "output"
    sink = Sink()
    tail = OutputTail(out, 0, sink.on_lines, sink.on_offset)

    async def first_daemon() -> None:
        tail.start()
        with out.open("ab") as f:
            f.write(b"one\ntwo\npar")
        deadline = time.monotonic() + 5
        while sink.lines != ["one", "two"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # The first daemon dies here: its tail is never finished.

    asyncio.run(first_daemon())
    assert sink.lines == ["one", "two"]
    assert sink.offsets[-1] == len(b"one\ntwo\n")  # the partial line is not counted

    with out.open("ab") as f:
        f.write(b"tial\nthree\n")
    _, second = read_all(out, sink.offsets[-1])
    assert second.lines == ["partial", "three"]


def test_offset_does_not_point_into_a_long_line(tmp_path: Path) -> None:
    out = tmp_path / "output"
    sink = Sink()
    tail = OutputTail(out, 0, sink.on_lines, sink.on_offset)

    async def first_daemon() -> None:
        tail.start()
        with out.open("ab") as f:
            f.write(b"a\nHEAD" + b"x" * 20000)  # a long line still being written
        deadline = time.monotonic() + 5
        while not sink.lines and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    asyncio.run(first_daemon())
    assert (sink.lines, sink.offsets) == (["a"], [2])
    with out.open("ab") as f:
        f.write(b"\n")
    _, second = read_all(out, sink.offsets[-1])
    assert second.lines == ["HEAD" + "x" * (_MAX_LINE_BYTES - 4) + MARK]


def test_tail_follows_a_growing_file(tmp_path: Path) -> None:
    out = tmp_path / "output"
    sink = Sink()

    async def scenario() -> None:
        tail = OutputTail(out, 0, sink.on_lines, sink.on_offset)
        tail.start()  # the file does not even exist yet
        for word in ("a", "b", "c"):
            with out.open("ab") as f:
                f.write(word.encode() + b"\n")
            deadline = time.monotonic() + 5
            while (not sink.lines or sink.lines[-1] != word) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await tail.finish()

    asyncio.run(scenario())
    assert sink.lines == ["a", "b", "c"]
    assert len(sink.batches) == 3  # each line went out while the file grew, not at the end


def test_a_failing_sink_does_not_stop_the_reading(tmp_path: Path) -> None:
    out = tmp_path / "output"
    out.write_text("a\nb\n")

    def broken(_batch: list[str]) -> None:
        raise RuntimeError("sink down")

    tail = OutputTail(out, 0, broken)
    asyncio.run(tail.finish())
    assert list(tail.tail) == ["a", "b"]


# --- killing what escaped -----------------------------------------------------------------


def test_kill_escaped_finds_processes_by_attempt_id(job: Job) -> None:
    other_id = f"t-{uuid.uuid4().hex[:12]}"
    escaped = subprocess.Popen(["setsid", "sleep", "100"], env=job.env)
    other = subprocess.Popen(["sleep", "100"], env={**job.env, "FLOTA_ATTEMPT_ID": other_id})
    prefix = subprocess.Popen(["sleep", "100"], env={**job.env, "FLOTA_ATTEMPT_ID": job.attempt_id + "x"})
    try:
        assert wait_until(lambda: _has_env(escaped.pid, job.attempt_id))
        assert kill_escaped(job.attempt_id) == 1
        assert escaped.wait(5) == -signal.SIGKILL
        assert other.poll() is None
        assert prefix.poll() is None
    finally:
        for proc in (escaped, other, prefix):
            proc.kill()
            proc.wait()


def _has_env(pid: int, attempt_id: str) -> bool:
    try:
        return psutil.Process(pid).environ().get("FLOTA_ATTEMPT_ID") == attempt_id
    except psutil.Error:
        return False
