"""coordinator/store.py against real SQLite files in tmp_path."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.models import (
    Attempt,
    EndReason,
    Job,
    JobPlacement,
    JobStatus,
    Metered,
    NodeRecord,
    Repo,
    Result,
    Run,
)
from coordinator.store import Store, StoreError

T0 = 1_700_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "flota.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    try:
        yield s
    finally:
        s.close()


def make_job(run_id: str, index: int, **kw: object) -> Job:
    fields: dict[str, object] = {
        "id": f"{run_id}.{index}",
        "run_id": run_id,
        "index": index,
        "name": f"job {index}",
        "agent": "shell",
        "command": f"echo {index}",
        "status": "queued",
        "created_at": T0 + index,
        "updated_at": T0 + index,
    }
    fields.update(kw)
    return Job(**fields)  # type: ignore[arg-type]


def make_run(run_id: str, n_jobs: int = 2, created_at: float = T0, **kw: object) -> Run:
    run = Run(id=run_id, name=f"run {run_id}", status="running", created_at=created_at, **kw)  # type: ignore[arg-type]
    run.jobs = [make_job(run_id, i) for i in range(n_jobs)]
    return run


def rich_job(run_id: str) -> Job:
    """A job with every field the store keeps set to something other than its default."""
    return make_job(
        run_id,
        0,
        name="refactor 'everything' \u2603",
        prompt="do the thing\nand the other",
        model="m-1",
        timeout_s=120.5,
        max_attempts=5,
        env={"A": "1", "B_2": "x=y", "EMPTY": ""},
        placement=JobPlacement(
            node="n1",
            labels={"gpu": "a100", "zone": "eu/1"},
            networks=("home", "vpn"),
            avoid_networks=("public",),
            exclusive=True,
            spread=True,
            cpus=2.5,
            memory_mb=4096,
            gpus=1,
        ),
        repo=Repo(url="/srv/repo.git", base_ref=f"refs/flota/base/{run_id}", base_commit="a" * 40),
        wait_reason="no node with 1 gpus",
        allow_empty=True,
        input="it's a line: $(not run) ✓",
        input_path="docs/a b.md",
    )


# --- runs and jobs --------------------------------------------------------------------------


def test_create_run_round_trips_every_field(store: Store) -> None:
    run = Run(
        id="r1",
        name="nightly",
        status="running",
        created_at=T0,
        repo_url="/srv/repo.git",
        base_commit="a" * 40,
        budget_usd=12.5,
    )
    run.jobs = [rich_job("r1"), make_job("r1", 1)]
    store.create_run(run)

    back = store.get_run("r1")
    assert back == run
    assert isinstance(back.jobs[0].placement.networks, tuple)
    assert store.get_job("r1.0") == run.jobs[0]
    assert store.get_job("r1.1") == run.jobs[1]
    assert store.run_exists("r1")


def test_a_job_stored_before_allow_empty_existed_reads_without_it(store: Store, db_path: Path) -> None:
    run = make_run("r1", 1)
    store.create_run(run)
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE jobs SET spec = json_remove(spec, '$.allow_empty')")
        assert "allow_empty" not in db.execute("SELECT spec FROM jobs").fetchone()[0]
    assert store.get_job("r1.0").allow_empty is False


def test_unknown_run_and_job(store: Store) -> None:
    assert store.get_run("nope") is None
    assert store.get_job("nope") is None
    assert not store.run_exists("nope")


def test_jobs_come_back_in_index_order(store: Store) -> None:
    run = make_run("r1", n_jobs=0)
    run.jobs = [make_job("r1", i) for i in (2, 0, 1)]
    store.create_run(run)
    assert [j.index for j in store.get_run("r1").jobs] == [0, 1, 2]  # type: ignore[union-attr]


def test_attempts_and_result_round_trip(store: Store) -> None:
    run = make_run("r1", n_jobs=1)
    store.create_run(run)
    job = run.jobs[0]

    first = Attempt("r1.0.a1", job.id, 1, "n1", "dispatching", "flota/r1/0-a1", created_at=T0 + 10)
    job.status, job.node_id, job.branch, job.updated_at = "dispatching", "n1", first.branch, T0 + 10
    job.attempts.append(first)
    store.add_attempt(job, first)
    assert store.get_job(job.id) == job

    first.status, first.started_at = "running", T0 + 11
    job.status = "running"
    store.save_attempt(job, first)
    assert store.get_job(job.id) == job

    first.status, first.finished_at, first.error = "lost", T0 + 20, "node went away"
    second = Attempt("r1.0.a2", job.id, 2, "n2", "dispatching", "flota/r1/0-a2", created_at=T0 + 21)
    job.status, job.node_id, job.branch, job.updated_at = "dispatching", "n2", second.branch, T0 + 21
    store.save_attempt(job, first)
    job.attempts.append(second)
    store.add_attempt(job, second)

    result = Result(
        status="success",
        exit_code=0,
        branch=second.branch,
        base_commit="a" * 40,
        head_commit="b" * 40,
        files_modified=("a.txt", "dir/b.txt"),
        insertions=3,
        deletions=1,
        started_at=T0 + 22,
        finished_at=T0 + 30,
        duration_s=8.0,
        error="",
        log_tail="ok\n",
        steps=4,
        tokens_in=100,
        tokens_out=50,
        cost_usd=0.25,
        node_id="n2",
        model="m-1",
        metered=Metered(
            calls=4, refused=1, tokens_in=100, tokens_out=50, cost_usd=0.25, note="n", budget_usd=1.0
        ),
    )
    second.status, second.started_at, second.finished_at = "success", T0 + 22, T0 + 30
    job.status, job.result, job.updated_at, job.wait_reason = "success", result, T0 + 30, ""
    store.save_attempt(job, second, result)

    back = store.get_job(job.id)
    assert back == job
    assert back is not None
    assert [a.number for a in back.attempts] == [1, 2]
    assert back.attempts[0].error == "node went away"
    assert back.result == result
    assert back.result.files_modified == ("a.txt", "dir/b.txt")


def test_save_job(store: Store) -> None:
    run = make_run("r1", n_jobs=2)
    store.create_run(run)
    job = run.jobs[1]
    job.status, job.wait_reason, job.cancel_requested, job.updated_at = "cancelled", "", True, T0 + 5
    job.result = Result(status="cancelled", error="cancelled by the user")
    store.save_job(job)
    assert store.get_job(job.id) == job
    assert store.get_job(run.jobs[0].id) == run.jobs[0]  # the other job is untouched


def test_why_a_result_ended_is_kept_and_older_results_have_no_reason(db_path: Path) -> None:
    store = Store(db_path)
    run = make_run("r1", n_jobs=2)
    store.create_run(run)
    for job, reason in zip(run.jobs, (EndReason.MAX_STEPS, EndReason.NONE), strict=True):
        job.status, job.updated_at = "partial", T0 + 5
        job.result = Result(status="partial", error="max steps reached (2)", reason=reason)  # type: ignore[arg-type]
        store.save_job(job)
    store.close()
    # A result saved before results had a reason: its JSON has no such key.
    db = sqlite3.connect(db_path)
    with db:
        db.execute("UPDATE jobs SET result = json_remove(result, '$.reason') WHERE id = 'r1.1'")
    db.close()
    again = Store(db_path)
    try:
        first, second = again.get_job("r1.0"), again.get_job("r1.1")
        assert first is not None and first.result is not None and first.result.reason is EndReason.MAX_STEPS
        assert second is not None and second.result is not None and second.result.reason is EndReason.NONE
    finally:
        again.close()


def test_create_run_is_one_transaction(store: Store) -> None:
    run = make_run("r1", n_jobs=2)
    run.jobs[1].id = run.jobs[0].id  # the second insert fails
    with pytest.raises(StoreError) as info:
        store.create_run(run)
    assert "\n" not in str(info.value)
    assert store.get_run("r1") is None
    assert store.get_job(run.jobs[0].id) is None
    # The connection is usable afterwards: no transaction was left open.
    store.create_run(make_run("r2"))
    assert store.run_exists("r2")


def test_add_attempt_is_one_transaction(store: Store) -> None:
    run = make_run("r1", n_jobs=1)
    store.create_run(run)
    job = run.jobs[0]
    attempt = Attempt("a1", job.id, 1, "n1", "dispatching", "flota/r1/0", created_at=T0)
    store.add_attempt(job, attempt)
    before = store.get_job(job.id)

    job.status = "dispatching"  # must not be saved: the attempt insert fails (duplicate id)
    with pytest.raises(StoreError):
        store.add_attempt(job, attempt)
    assert store.get_job(job.id) == before


def test_attempt_for_unknown_job_is_refused(store: Store) -> None:
    ghost = make_job("r9", 0)
    with pytest.raises(StoreError):
        store.add_attempt(ghost, Attempt("a1", ghost.id, 1, "n1", "dispatching", "b", created_at=T0))


def test_duplicate_run_id(store: Store) -> None:
    store.create_run(make_run("r1"))
    with pytest.raises(StoreError):
        store.create_run(make_run("r1", n_jobs=0))


def test_finish_run_and_active_runs(store: Store) -> None:
    for i, rid in enumerate(("r1", "r2", "r3")):
        store.create_run(make_run(rid, created_at=T0 + i))
    store.finish_run("r2", "success", T0 + 100)

    active = store.active_runs()
    assert [r.id for r in active] == ["r1", "r3"]
    assert all(len(r.jobs) == 2 for r in active)  # with their jobs, ready to resume

    r2 = store.get_run("r2")
    assert r2 is not None
    assert (r2.status, r2.finished_at) == ("success", T0 + 100)

    for rid in ("r1", "r3"):
        store.finish_run(rid, "failed", T0 + 200)
    assert store.active_runs() == []


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(10, ["r3", "r2", "r1"]), (2, ["r3", "r2"]), (1, ["r3"]), (0, [])],
)
def test_list_runs_newest_first(store: Store, limit: int, expected: list[str]) -> None:
    for rid, created in (("r2", T0 + 1), ("r1", T0), ("r3", T0 + 2)):
        store.create_run(make_run(rid, created_at=created))
    runs = store.list_runs(limit)
    assert [r.id for r in runs] == expected
    assert all(r.jobs == [] for r in runs)  # a listing does not load jobs


def test_ended_runs_are_the_finished_ones_up_to_the_cutoff_oldest_first(store: Store) -> None:
    for rid in ("r1", "r2", "r3", "r4"):
        store.create_run(make_run(rid))
    store.finish_run("r2", "success", T0 + 50)
    store.finish_run("r1", "failed", T0 + 10)
    store.finish_run("r3", "cancelled", T0 + 100)  # r4 still runs
    assert [r.id for r in store.ended_runs(T0 + 50)] == ["r1", "r2"]
    assert all(len(r.jobs) == 2 for r in store.ended_runs(T0 + 50))  # with their jobs
    assert [r.id for r in store.ended_runs(T0 + 49.9)] == ["r1"]
    assert [r.id for r in store.ended_runs(T0 + 1e6)] == ["r1", "r2", "r3"]  # never r4
    assert store.ended_runs(T0) == []


def test_delete_run_takes_its_jobs_attempts_and_logs_and_nothing_else(store: Store) -> None:
    for rid in ("r1", "r2"):
        run = make_run(rid)
        store.create_run(run)
        for job in run.jobs:
            store.add_attempt(job, Attempt(f"{job.id}.a1", job.id, 1, "n1", "success", f"flota/{job.id}", T0))
            store.append_logs(job.id, f"{job.id}.a1", [f"{job.id} says hi"])
        store.finish_run(rid, "success", T0 + 1)
    assert store.delete_run("r1")
    assert store.get_run("r1") is None and store.get_job("r1.0") is None
    assert store.logs("r1.0") == [] and store.logs("r1.1") == []
    assert store._query("SELECT COUNT(*) FROM attempts WHERE job_id LIKE 'r1.%'") == [(0,)]
    kept = store.get_run("r2")
    assert kept is not None and [len(j.attempts) for j in kept.jobs] == [1, 1]
    assert store.logs("r2.1")[0][2] == "r2.1 says hi"


def test_delete_run_never_takes_a_running_run(store: Store) -> None:
    store.create_run(make_run("r1"))
    store.append_logs("r1.0", "r1.0.a1", ["still going"])
    assert not store.delete_run("r1") and not store.delete_run("r9")
    run = store.get_run("r1")
    assert run is not None and len(run.jobs) == 2 and store.logs("r1.0")


# --- tokens ---------------------------------------------------------------------------------


def test_token_is_single_use(store: Store) -> None:
    store.add_token("t1", "hash1", T0, T0 + 900)
    assert store.token("t1") == ("hash1", T0 + 900, None)
    assert store.use_token("t1", "node1", T0 + 1) is True
    assert store.token("t1") == ("hash1", T0 + 900, T0 + 1)
    assert store.use_token("t1", "node2", T0 + 2) is False
    assert store.token("t1") == ("hash1", T0 + 900, T0 + 1)  # the first use stands


def test_unknown_token(store: Store) -> None:
    assert store.token("nope") is None
    assert store.use_token("nope", "node1", T0) is False


def test_duplicate_token_id(store: Store) -> None:
    store.add_token("t1", "hash1", T0, T0 + 900)
    with pytest.raises(StoreError):
        store.add_token("t1", "hash2", T0, T0 + 900)
    assert store.token("t1") == ("hash1", T0 + 900, None)


# --- nodes ----------------------------------------------------------------------------------


def test_enroll_node_upserts(store: Store) -> None:
    store.enroll_node(NodeRecord("id2", "beta", "fp2", T0))
    store.enroll_node(NodeRecord("id1", "alpha", "fp1", T0))
    assert store.nodes() == [NodeRecord("id1", "alpha", "fp1", T0), NodeRecord("id2", "beta", "fp2", T0)]

    store.node_seen("id1", "alpha", "10.0.0.1:7380", T0 + 5)
    # Re-enrolling (a new key) replaces name and fingerprint but keeps where it was seen.
    store.enroll_node(NodeRecord("id1", "gamma", "fp1b", T0 + 10))
    assert store.nodes() == [
        NodeRecord("id2", "beta", "fp2", T0),
        NodeRecord("id1", "gamma", "fp1b", T0 + 10, "10.0.0.1:7380", T0 + 5, False),
    ]


def test_node_seen(store: Store) -> None:
    store.enroll_node(NodeRecord("id1", "alpha", "fp1", T0))
    store.node_seen("id1", "renamed", "[fd00::1]:7380", T0 + 3)
    store.node_seen("ghost", "ghost", "10.0.0.9:7380", T0 + 3)  # unknown: nothing happens
    assert store.nodes() == [NodeRecord("id1", "renamed", "fp1", T0, "[fd00::1]:7380", T0 + 3)]


# --- logs -----------------------------------------------------------------------------------


def test_logs_append_and_read(store: Store) -> None:
    store.append_logs("j1", "a1", ["one", "two"])
    store.append_logs("j2", "b1", ["other job"])
    store.append_logs("j1", "a2", ["three", "", "unicode \u2603"])
    store.append_logs("j1", "a2", [])

    all_lines = store.logs("j1")
    assert [(a, line) for _, a, line in all_lines] == [
        ("a1", "one"),
        ("a1", "two"),
        ("a2", "three"),
        ("a2", ""),
        ("a2", "unicode \u2603"),
    ]
    seqs = [s for s, _, _ in all_lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    assert store.logs("j1", after_seq=seqs[1]) == all_lines[2:]
    assert store.logs("j1", after_seq=seqs[-1]) == []
    assert store.logs("j1", limit=2) == all_lines[:2]
    assert store.logs("j1", after_seq=seqs[0], limit=2) == all_lines[1:3]
    assert store.logs("nope") == []


def test_following_logs_page_by_page(store: Store) -> None:
    store.append_logs("j1", "a1", [f"line {i}" for i in range(25)])
    seen: list[str] = []
    after = 0
    while page := store.logs("j1", after_seq=after, limit=10):
        seen += [line for _, _, line in page]
        after = page[-1][0]
    assert seen == [f"line {i}" for i in range(25)]


# --- the file -------------------------------------------------------------------------------


def test_state_survives_close_and_reopen(db_path: Path) -> None:
    first = Store(db_path)
    run = Run(id="r1", name="x", status="running", created_at=T0)
    run.jobs = [rich_job("r1")]
    first.create_run(run)
    first.add_token("t1", "h", T0, T0 + 1)
    first.enroll_node(NodeRecord("id1", "alpha", "fp", T0))
    first.append_logs(run.jobs[0].id, "a1", ["hello"])
    first.close()

    again = Store(db_path)
    try:
        assert again.get_run("r1") == run
        assert again.token("t1") == ("h", T0 + 1, None)
        assert [n.id for n in again.nodes()] == ["id1"]
        assert [line for _, _, line in again.logs(run.jobs[0].id)] == ["hello"]
        # Sequence numbers keep growing after a reopen.
        again.append_logs(run.jobs[0].id, "a1", ["world"])
        seqs = [s for s, _, _ in again.logs(run.jobs[0].id)]
        assert seqs[1] > seqs[0]
    finally:
        again.close()


def test_committed_state_survives_a_killed_process(db_path: Path) -> None:
    """Each call commits: a process killed without close() loses nothing it was told was saved."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from coordinator.models import Job, Run
        from coordinator.store import Store
        s = Store(Path({str(db_path)!r}))
        run = Run(id="r1", name="x", status="running", created_at=1.0)
        run.jobs = [Job(id="r1.0", run_id="r1", index=0, name="j", agent="shell", command="true",
                        status="queued", created_at=1.0, updated_at=1.0)]
        s.create_run(run)
        s.append_logs("r1.0", "a1", ["before the crash"])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr

    s = Store(db_path)
    try:
        assert [r.id for r in s.active_runs()] == ["r1"]
        assert [line for _, _, line in s.logs("r1.0")] == ["before the crash"]
    finally:
        s.close()


def test_database_file_is_private_and_in_wal_mode(store: Store, db_path: Path) -> None:
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        other.close()


def test_reopen_fixes_a_loosened_mode(db_path: Path) -> None:
    Store(db_path).close()
    db_path.chmod(0o644)
    Store(db_path).close()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def _modes(db_path: Path) -> dict[str, int]:
    files = [db_path, *(db_path.with_name(db_path.name + s) for s in ("-wal", "-shm"))]
    return {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the usual umask: what a file gets unless the store says otherwise
    try:
        yield
    finally:
        os.umask(old)


def test_the_wal_and_shm_files_are_private_too(db_path: Path, umask_022: None) -> None:
    store = Store(db_path)
    try:
        store.create_run(Run("r000001", "n", "running", T0, jobs=[make_job("r000001", 1)]))
        assert _modes(db_path) == {"flota.db": 0o600, "flota.db-wal": 0o600, "flota.db-shm": 0o600}
    finally:
        store.close()


def test_reopen_fixes_loose_wal_and_shm_files(db_path: Path, umask_022: None) -> None:
    db_path.parent.mkdir(mode=0o700)
    older = sqlite3.connect(db_path)  # as an older version left them: 0644, still open
    try:
        older.execute("PRAGMA journal_mode=WAL")
        older.execute("CREATE TABLE t (x)")
        assert _modes(db_path) == {"flota.db": 0o644, "flota.db-wal": 0o644, "flota.db-shm": 0o644}
        Store(db_path).close()
        assert _modes(db_path) == {"flota.db": 0o600, "flota.db-wal": 0o600, "flota.db-shm": 0o600}
    finally:
        older.close()


def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(StoreError, match="cannot open the database") as info:
        Store(directory)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert str(directory) in message


def test_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "flota.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError) as info:
        Store(path)
    assert "\n" not in str(info.value)


def test_parent_is_a_file_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(StoreError):
        Store(blocker / "flota.db")


def test_a_runs_budget_reason_and_spending_round_trip(store: Store) -> None:
    run = make_run("r1", n_jobs=2)
    run.budget_usd = 2.5
    store.create_run(run)
    for job, cost in zip(run.jobs, (0.75, 1.0), strict=True):
        attempt = Attempt(f"{job.id}.a1", job.id, 1, "n1", "dispatching", "", T0)  # type: ignore[arg-type]
        store.add_attempt(job, attempt)
        attempt.status = "success"  # type: ignore[assignment]
        store.save_attempt(job, attempt, Result(status="success", cost_usd=cost))  # type: ignore[arg-type]
    stored = store.get_run("r1")
    assert stored is not None
    assert (stored.budget_usd, stored.spent_usd, stored.reason) == (2.5, 1.75, "")
    job = run.jobs[1]
    job.status = "cancelled"  # type: ignore[assignment]
    store.stop_jobs("r1", "the run's budget of $2.50 is spent", [job])
    (active,) = store.active_runs()
    assert active.reason == "the run's budget of $2.50 is spent" and active.jobs[1].status == "cancelled"
    assert active.spent_usd == 1.75


def test_a_database_from_before_run_budgets_opens_with_none(db_path: Path) -> None:
    store = Store(db_path)
    store.create_run(make_run("r1", n_jobs=1))
    store.close()
    db = sqlite3.connect(db_path)
    with db:  # the runs table as it was before the batch columns
        db.execute("ALTER TABLE runs DROP COLUMN budget_usd")
        db.execute("ALTER TABLE runs DROP COLUMN reason")
    db.close()
    again = Store(db_path)
    try:
        run = again.get_run("r1")
        assert run is not None and (run.budget_usd, run.spent_usd, run.reason) == (0.0, 0.0, "")
        assert run.jobs[0].input == "" and run.jobs[0].input_path == ""
    finally:
        again.close()


def test_a_results_metered_figures_are_its_own_and_travel_on() -> None:
    """coordinator/convert.py: a node's result with a meter count takes the metered
    tokens and cost over the agent's own word, and keeps the count for the CLI."""
    from coordinator import convert
    from protos.flota.v1 import types_pb2

    wire = types_pb2.JobResult(
        status="partial",
        tokens_in=5,
        tokens_out=1,
        cost_usd=0.001,  # what the agent said
        metered=types_pb2.MeterUsage(
            calls=4, refused=1, tokens_in=40, tokens_out=16000, cost_usd=0.0096, priced=True
        ),
    )
    result = convert.result_from_pb(wire)
    assert (result.tokens_in, result.tokens_out, result.cost_usd) == (40, 16000, 0.0096)
    assert result.metered == Metered(calls=4, refused=1, tokens_in=40, tokens_out=16000, cost_usd=0.0096)
    sent = convert.result_to_pb(result)
    assert sent.metered == wire.metered and sent.cost_usd == 0.0096
    plain = convert.result_from_pb(types_pb2.JobResult(status="success", cost_usd=0.5))
    assert (
        plain.metered is None
        and plain.cost_usd == 0.5
        and not convert.result_to_pb(plain).HasField("metered")
    )


def test_a_graphs_jobs_keep_their_dependencies_role_and_bases(db_path: Path) -> None:
    store = Store(db_path)
    run = make_run("r1", 2)
    waiting = run.jobs[1]
    waiting.status, waiting.depends_on, waiting.role = JobStatus.WAITING, ("r1.0",), "tester"
    store.create_run(run)
    assert store.get_job("r1.1") == waiting
    waiting.status, waiting.bases = JobStatus.QUEUED, (("refs/heads/flota/r1/0", "b" * 40),)
    store.save_job(waiting)
    back = store.get_job("r1.1")
    assert (back.status, back.depends_on, back.role, back.bases) == (
        JobStatus.QUEUED,
        ("r1.0",),
        "tester",
        (("refs/heads/flota/r1/0", "b" * 40),),
    )
    store.close()
    # A database from before graphs (issue 17): no `bases` column, no graph keys in a spec.
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE jobs SET spec = json_remove(spec, '$.depends_on', '$.role')")
        db.execute("ALTER TABLE jobs DROP COLUMN bases")
    older = Store(db_path)
    job = older.get_job("r1.1")
    assert (job.depends_on, job.role, job.bases) == ((), "", ())
    older.close()
