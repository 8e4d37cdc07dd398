"""node_agent/journal.py: attempts on disk until the coordinator has their results."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from node_agent.journal import Entry, Journal
from node_agent.models import Job, Repo, Resources, Result
from protos.contract import ResultStatus
from protos.flota.v1 import types_pb2


def spec(attempt_id: str, **kw: object) -> Job:
    return Job(
        job_id="r1.0",
        run_id="r1",
        attempt_id=attempt_id,
        agent="shell",
        command="echo hi",
        env={"A": "1"},
        **kw,  # type: ignore[arg-type]
    )


def result(attempt_id: str, status: str = "success") -> Result:
    return Result(
        job_id="r1.0",
        attempt_id=attempt_id,
        status=ResultStatus(status),
        files_modified=("a.txt", "b/c.txt"),
        exit_code=3,
    )


def pairs(journal: Journal) -> list[tuple[Job, Result | None]]:
    return [(e.job, e.result) for e in journal.entries()]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs"


def test_begin_finish_entries_forget(root: Path) -> None:
    journal = Journal(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert journal.entries() == []

    journal.begin(spec("a1"))
    journal.begin(spec("a2", timeout_s=30))
    assert journal.entries() == [Entry(spec("a1"), None), Entry(spec("a2", timeout_s=30), None)]
    assert stat.S_IMODE((root / "a1").stat().st_mode) == 0o700

    journal.finish(result("a1"))
    assert pairs(journal) == [(spec("a1"), result("a1")), (spec("a2", timeout_s=30), None)]

    journal.forget("a1")
    assert pairs(journal) == [(spec("a2", timeout_s=30), None)]
    assert not (root / "a1").exists()
    assert not list(root.rglob("*.tmp"))


def test_every_field_survives_the_files(root: Path) -> None:
    journal = Journal(root)
    full = spec(
        "a1",
        prompt="p",
        model="openai/m",
        repo=Repo("/srv/r.git", "refs/flota/base/r1", "a" * 40),
        branch="flota/r1/0",
        timeout_s=2.5,
        resources=Resources(1.5, 512, 1),
        name="n",
        resume_branches=("flota/r1/0-a0",),
        secrets={"KEY": ""},
        max_steps=7,
        budget_usd=0.25,
        api_base="http://127.0.0.1:1/v1",
        check="make test",
        report_paths={"cost_usd": "usage.cost"},
        allow_empty=True,
    )
    done = Result(
        "r1.0",
        "a1",
        ResultStatus.PARTIAL,
        exit_code=-1,
        error="e",
        branch="flota/r1/0",
        base_commit="a" * 40,
        head_commit="b" * 40,
        files_modified=("x",),
        insertions=1,
        deletions=2,
        started_at=1.5,
        finished_at=2.5,
        duration_s=1.0,
        log_tail="t",
        steps=3,
        tokens_in=4,
        tokens_out=5,
        cost_usd=0.5,
        node_id="n1",
        model="openai/m",
        log_lines_lost=6,
        log_lines=("l1", "l2"),
        check="passed",
        answer="a",
        log_lines_marked=4,
    )
    journal.begin(full)
    journal.finish(done)
    assert pairs(Journal(root)) == [(full, done)]


def test_reads_what_an_older_daemon_wrote(root: Path) -> None:
    """The files hold the wire messages, as every daemon so far wrote them: an upgraded
    daemon finds the jobs (and results) an older one left."""
    older = root / "r1.0.a1"
    older.mkdir(parents=True)
    wire = types_pb2.JobSpec(job_id="r1.0", run_id="r1", attempt_id="r1.0.a1", agent="shell", command="true")
    wire.repo.CopyFrom(types_pb2.RepoSpec(url="/srv/r.git", base_commit="c" * 40))
    (older / "spec.pb").write_bytes(wire.SerializeToString())
    (older / "result.pb").write_bytes(
        types_pb2.JobResult(
            job_id="r1.0", attempt_id="r1.0.a1", status="failed", exit_code=2
        ).SerializeToString()
    )
    (older / "stop").write_text("cancelled ")
    (entry,) = Journal(root).entries()
    assert entry.job == Job("r1.0", "r1", "r1.0.a1", command="true", repo=Repo("/srv/r.git", "", "c" * 40))
    assert entry.result == Result("r1.0", "r1.0.a1", ResultStatus.FAILED, exit_code=2)
    assert entry.stop is ResultStatus.CANCELLED
    # An older daemon's offset file held the offset alone.
    (older / "offset").write_text("4096")
    (entry,) = Journal(root).entries()
    assert (entry.offset, entry.dropped, entry.marked) == (4096, 0, 0)
    # and what this daemon writes, an older one reads
    assert types_pb2.JobSpec.FromString((older / "spec.pb").read_bytes()) == wire
    Journal(root).begin(entry.job)
    assert types_pb2.JobSpec.FromString((older / "spec.pb").read_bytes()) == wire


def test_process_stop_offset_and_exit_are_journaled(root: Path) -> None:
    journal = Journal(root)
    journal.begin(spec("a1"))
    assert journal.output("a1") == root / "a1" / "output"
    assert journal.exit_file("a1") == root / "a1" / "exit"
    assert journal.exit_code("a1") is None

    journal.spawned("a1", 4242, 1795466310.29, 1795466311.0007234)
    journal.published("a1", 1234, 56, 7)
    journal.stopping("a1", ResultStatus.TIMEOUT, "timed out after 30 s")
    journal.exit_file("a1").write_text("137\n")  # as the node's keeper writes it
    assert journal.exit_code("a1") == 137

    assert Journal(root).entries() == [
        Entry(
            spec("a1"),
            None,
            pid=4242,
            create_time=1795466310.29,
            spawned_at=1795466311.0007234,
            exit_code=137,
            offset=1234,
            dropped=56,
            marked=7,
            stop="timeout",
            stop_detail="timed out after 30 s",
        )
    ]
    assert not list(root.rglob("*.tmp"))


def test_a_stop_without_detail(root: Path) -> None:
    journal = Journal(root)
    journal.begin(spec("a1"))
    journal.stopping("a1", ResultStatus.CANCELLED, "")
    (entry,) = journal.entries()
    assert (entry.stop, entry.stop_detail, entry.pid, entry.exit_code) == ("cancelled", "", 0, None)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("proc", "12 not-a-time"),
        ("proc", ""),
        ("offset", "lots"),
        ("offset", "1 2 3 4"),
        ("offset", "10 -2 0"),
        ("exit", "Killed"),
        ("exit", ""),
    ],
)
def test_half_written_or_garbled_files_read_as_unknown(root: Path, name: str, content: str) -> None:
    journal = Journal(root)
    journal.begin(spec("a1"))
    journal.spawned("a1", 77, 5.5, 6.5)
    journal.published("a1", 10)
    (root / "a1" / name).write_text(content)
    (entry,) = journal.entries()
    expected = {
        "proc": (0, 0.0, 0.0, 10, None),
        "offset": (77, 5.5, 6.5, 0, None),
        "exit": (77, 5.5, 6.5, 10, None),
    }[name]
    assert (entry.pid, entry.create_time, entry.spawned_at, entry.offset, entry.exit_code) == expected


def test_entries_survive_a_new_journal_on_the_same_root(root: Path) -> None:
    first = Journal(root)
    first.begin(spec("a1"))
    first.finish(result("a1", "failed"))
    first.begin(spec("a2"))
    assert pairs(Journal(root)) == [(spec("a1"), result("a1", "failed")), (spec("a2"), None)]


def test_finish_twice_keeps_the_last_result(root: Path) -> None:
    journal = Journal(root)
    journal.begin(spec("a1"))
    journal.finish(result("a1", "failed"))
    journal.finish(result("a1", "cancelled"))
    assert pairs(journal) == [(spec("a1"), result("a1", "cancelled"))]


def test_forget_unknown_attempt_is_harmless(root: Path) -> None:
    journal = Journal(root)
    journal.begin(spec("a1"))
    journal.forget("never-begun")
    assert [e.job.attempt_id for e in journal.entries()] == ["a1"]


def test_forget_removes_output_and_process_files(root: Path) -> None:
    journal = Journal(root)
    journal.begin(spec("a1"))
    journal.spawned("a1", 1, 2.0, 3.0)
    journal.output("a1").write_bytes(b"hello\n")
    journal.finish(result("a1"))
    journal.forget("a1")
    assert not (root / "a1").exists()
    assert journal.entries() == []


def test_things_that_are_not_attempts_are_skipped(root: Path) -> None:
    journal = Journal(root)
    journal.begin(spec("a1"))
    (root / "stray-file").write_text("not a directory")
    (root / "empty-dir").mkdir()
    (root / "half").mkdir()
    (root / "half" / "spec.pb.tmp").write_bytes(b"\x0a")  # a write interrupted before its rename
    assert [e.job.attempt_id for e in journal.entries()] == ["a1"]


@pytest.mark.parametrize("which", ["spec.pb", "result.pb"])
def test_corrupt_files_are_skipped(root: Path, which: str) -> None:
    journal = Journal(root)
    journal.begin(spec("a1"))
    journal.begin(spec("a2"))
    journal.finish(result("a2"))
    (root / "a2" / which).write_bytes(b"\xff\xff\xff garbage")
    found = pairs(journal)
    if which == "spec.pb":
        assert found == [(spec("a1"), None)]
    else:
        assert found == [(spec("a1"), None), (spec("a2"), None)]  # the attempt stays, its result is unknown


@pytest.mark.parametrize(
    "attempt_id", ["", ".", "..", "/", "../sibling", "../../x", "a/../../sibling", "/tmp"]
)
def test_forget_refuses_path_like_ids(root: Path, attempt_id: str) -> None:
    journal = Journal(root)
    journal.begin(spec("a1"))
    sibling = root.parent / "sibling"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("keep")

    journal.forget(attempt_id)

    assert (sibling / "keep.txt").read_text() == "keep"
    assert root.is_dir()
    assert [e.job.attempt_id for e in journal.entries()] == ["a1"]


def test_forget_does_not_follow_a_symlink_out_of_the_root(root: Path) -> None:
    journal = Journal(root)
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (root / "link").symlink_to(outside, target_is_directory=True)

    journal.forget("link")

    assert (outside / "keep.txt").read_text() == "keep"


def _on_disk(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_trim_frees_the_start_of_the_output_and_keeps_its_offsets(root: Path) -> None:
    """A hole where the delivered (or dropped) output was: the disk blocks go, the size and
    every later offset stay, and the job's appends go on at the end."""
    journal = Journal(root)
    journal.begin(spec("a1"))
    out = journal.output("a1")
    line = b"%07d a line of output, as a chatty job prints it\n"
    with open(out, "ab", buffering=0) as job:  # as the keeper opens it for the job
        job.write(b"".join(line % i for i in range(200_000)))  # about 11 MiB
        size = out.stat().st_size
        assert _on_disk(out) >= size - 4096
        upto = (size - (1 << 20)) // 4096 * 4096
        assert journal.trim("a1", upto)
        assert out.stat().st_size == size
        assert _on_disk(out) <= size - upto + 64 * 1024
        job.write(b"after\n")
    data = out.read_bytes()
    assert data[:upto] == bytes(upto)
    assert data[upto:size] == b"".join(line % i for i in range(200_000))[upto:]
    assert data[size:] == b"after\n"
    assert journal.trim("a1", upto)  # again: nothing more to free, no harm
    assert journal.trim("gone", 4096)  # no output (yet): nothing to do
