"""Durable coordinator state in SQLite (WAL). The only module that speaks SQL.

A job is written before it is dispatched and its result as soon as it arrives; each
state change is one transaction, so a crash leaves either the old or the new state.

Error handling: sqlite errors surface as StoreError with one line.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from coordinator.errors import StoreError
from coordinator.models import (
    Attempt,
    AttemptStatus,
    Cause,
    EndReason,
    Job,
    JobPlacement,
    JobStatus,
    Metered,
    NodeRecord,
    Repo,
    Result,
    ResultStatus,
    Run,
    RunStatus,
)

__all__ = ["Store", "StoreError"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, fingerprint TEXT NOT NULL,
  enrolled_at REAL NOT NULL, address TEXT NOT NULL DEFAULT '', last_seen REAL NOT NULL DEFAULT 0,
  removed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, created_at REAL NOT NULL,
  expires_at REAL NOT NULL, used_at REAL, used_by TEXT);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL,
  finished_at REAL NOT NULL DEFAULT 0, repo_url TEXT NOT NULL DEFAULT '',
  base_commit TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id), idx INTEGER NOT NULL,
  status TEXT NOT NULL, spec TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
  wait_reason TEXT NOT NULL DEFAULT '', node_id TEXT NOT NULL DEFAULT '',
  branch TEXT NOT NULL DEFAULT '', result TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_run ON jobs(run_id);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS attempts (
  id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs(id), number INTEGER NOT NULL,
  node_id TEXT NOT NULL, status TEXT NOT NULL, branch TEXT NOT NULL, created_at REAL NOT NULL,
  started_at REAL NOT NULL DEFAULT 0, finished_at REAL NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '', result TEXT);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts(job_id);
CREATE TABLE IF NOT EXISTS logs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, attempt_id TEXT NOT NULL,
  line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS logs_job ON logs(job_id, seq);
"""

# What a job row keeps as JSON: everything the user asked for.
_NOT_SPEC = "id run_id index status created_at updated_at placement repo wait_reason node_id branch result"
_SPEC_FIELDS = tuple(
    f.name
    for f in fields(Job)
    if f.name not in (*_NOT_SPEC.split(), "attempts", "cancel_requested", "budget_from", "bases")
)
# Columns added after the first release: (table, column, declaration). Added in place
# when an older database is opened.
_ADDED_COLUMNS = (
    ("nodes", "draining", "INTEGER NOT NULL DEFAULT 0"),
    ("nodes", "unreachable_after", "REAL NOT NULL DEFAULT 0"),
    ("nodes", "lost_after", "REAL NOT NULL DEFAULT 0"),
    ("attempts", "cause", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "budget_from", "INTEGER NOT NULL DEFAULT 0"),
    # graph (runs as a graph, issue 17): what a job of a graph starts from, as JSON
    # [[ref, commit], ...], set when its dependencies have succeeded.
    ("jobs", "bases", "TEXT NOT NULL DEFAULT '[]'"),
    # batch: a run's total budget, and why it stopped short (its budget was spent)
    ("runs", "budget_usd", "REAL NOT NULL DEFAULT 0"),
    ("runs", "reason", "TEXT NOT NULL DEFAULT ''"),
)
# Before `cause` was a column, who closed an attempt was read from its error's wording:
# a database from then gets the column filled in once, from those same words.
_CAUSE_FROM_ERROR = (
    ("dispatch failed%", Cause.DISPATCH),
    ("node busy%", Cause.REFUSED),
    ("cancelled (node unreachable)%", Cause.UNREACHABLE),
)


_RESULT_FIELDS = tuple(f.name for f in fields(Result) if f.name != "metered")
_PLACEMENT_FIELDS = tuple(f.name for f in fields(JobPlacement))


def _result_json(result: Result | None) -> str | None:
    # Flat fields (files_modified is a tuple, a list in JSON): no need for asdict's deep copy.
    if result is None:
        return None
    data = {k: getattr(result, k) for k in _RESULT_FIELDS}
    data["metered"] = None if result.metered is None else asdict(result.metered)
    return json.dumps(data)


def _result_from(text: str | None) -> Result | None:
    if not text:
        return None
    data = json.loads(text)
    data["files_modified"] = tuple(data.get("files_modified", ()))
    data["status"] = ResultStatus(data["status"])
    data["reason"] = EndReason.read(data.get("reason", ""))  # absent before results had one
    metered = data.get("metered")
    data["metered"] = Metered(**metered) if isinstance(metered, dict) else None
    return Result(**data)


class Store:
    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # SQLite gives the -wal and -shm files it creates the database file's mode, so
            # the file is 0600 before SQLite first opens it (not only after).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            path.chmod(0o600)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash; only an OS crash
            # can lose the last transactions, never corrupt the file.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            for table, column, decl in _ADDED_COLUMNS:
                have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                    if column == "cause":
                        self._fill_causes()
            for suffix in ("-wal", "-shm"):  # left 0644 by an older version, and reopened as they are
                side = path.with_name(path.name + suffix)
                if side.exists():
                    side.chmod(0o600)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the database {path}: {exc}") from exc

    def _fill_causes(self) -> None:
        for pattern, cause in _CAUSE_FROM_ERROR:
            self._db.execute(
                "UPDATE attempts SET cause = ? WHERE cause = '' AND error LIKE ?", (cause.value, pattern)
            )
        # Every "lost" was then taken for the coordinator's own verdict.
        self._db.execute(
            "UPDATE attempts SET cause = ? WHERE cause = '' AND status = 'lost'", (Cause.LOST.value,)
        )

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # also after a failed COMMIT
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"the coordinator's database failed: {exc}") from exc

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"the coordinator's database failed: {exc}") from exc

    # --- tokens -------------------------------------------------------------------------

    def add_token(self, token_id: str, secret_hash: str, created_at: float, expires_at: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens (id, secret_hash, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (token_id, secret_hash, created_at, expires_at),
            )

    def token(self, token_id: str) -> tuple[str, float, float | None] | None:
        """(secret_hash, expires_at, used_at) of a token, or None."""
        rows = self._query("SELECT secret_hash, expires_at, used_at FROM tokens WHERE id = ?", (token_id,))
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def use_token(self, token_id: str, node_id: str, now: float) -> bool:
        """Mark a token used; False if it already was (single use, race-free)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE tokens SET used_at = ?, used_by = ? WHERE id = ? AND used_at IS NULL",
                (now, node_id, token_id),
            )
            return cur.rowcount == 1

    # --- nodes --------------------------------------------------------------------------

    def enroll_node(self, node: NodeRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO nodes (id, name, fingerprint, enrolled_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET name = excluded.name, fingerprint = excluded.fingerprint, "
                "enrolled_at = excluded.enrolled_at, removed = 0",
                (node.id, node.name, node.fingerprint, node.enrolled_at),
            )

    def nodes(self) -> list[NodeRecord]:
        rows = self._query(
            "SELECT id, name, fingerprint, enrolled_at, address, last_seen, removed, draining, "
            "unreachable_after, lost_after FROM nodes ORDER BY name"
        )
        return [
            NodeRecord(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), bool(r[7]), r[8], r[9]) for r in rows
        ]

    def remove_node(self, node_id: str) -> None:
        """Revoke: the enrolled certificate is refused from now on (a new join may enroll
        the machine again, with a new certificate)."""
        with self._tx() as db:
            db.execute(
                "UPDATE nodes SET removed = 1, address = '', fingerprint = '' WHERE id = ?", (node_id,)
            )

    def set_draining(self, node_id: str, draining: bool) -> None:
        with self._tx() as db:
            db.execute("UPDATE nodes SET draining = ? WHERE id = ?", (int(draining), node_id))

    def node_grace(self, node_id: str, unreachable_after: float, lost_after: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE nodes SET unreachable_after = ?, lost_after = ? WHERE id = ?",
                (unreachable_after, lost_after, node_id),
            )

    def finish_run_again(self, run_id: str, status: str) -> None:
        """A finished run whose outcome changed (a late result won): new status, same end."""
        with self._tx() as db:
            db.execute("UPDATE runs SET status = ? WHERE id = ? AND status != 'running'", (status, run_id))

    def node_seen(self, node_id: str, name: str, address: str, last_seen: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE nodes SET name = ?, address = ?, last_seen = ? WHERE id = ?",
                (name, address, last_seen, node_id),
            )

    # --- runs and jobs ------------------------------------------------------------------

    def create_run(self, run: Run) -> None:
        """The run and all its jobs, in one transaction, before anything is dispatched."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (id, name, status, created_at, repo_url, base_commit, budget_usd) "
                "VALUES (?,?,?,?,?,?,?)",
                (run.id, run.name, run.status, run.created_at, run.repo_url, run.base_commit, run.budget_usd),
            )
            db.executemany(
                "INSERT INTO jobs (id, run_id, idx, status, spec, created_at, updated_at, wait_reason) "
                "VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        j.id,
                        j.run_id,
                        j.index,
                        j.status,
                        self._spec(j),
                        j.created_at,
                        j.updated_at,
                        j.wait_reason,
                    )
                    for j in run.jobs
                ],
            )

    @staticmethod
    def _spec(job: Job) -> str:
        spec: dict[str, Any] = {k: getattr(job, k) for k in _SPEC_FIELDS}
        spec["env"] = dict(job.env)
        spec["report_paths"] = dict(job.report_paths)
        p = job.placement  # flat, not asdict: its deep copy was most of a 10,000-job submit
        spec["placement"] = {**{f: getattr(p, f) for f in _PLACEMENT_FIELDS}, "labels": dict(p.labels)}
        spec["repo"] = asdict(job.repo) if job.repo else None
        return json.dumps(spec)

    def add_attempt(self, job: Job, attempt: Attempt) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO attempts (id, job_id, number, node_id, status, branch, created_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (
                    attempt.id,
                    attempt.job_id,
                    attempt.number,
                    attempt.node_id,
                    attempt.status,
                    attempt.branch,
                    attempt.created_at,
                ),
            )
            self._update_job(db, job)

    def save_attempt(self, job: Job, attempt: Attempt, result: Result | None = None) -> None:
        """Persist an attempt's new state together with its job's (and the result, if any)."""
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET status = ?, started_at = ?, finished_at = ?, error = ?, cause = ?, "
                "result = COALESCE(?, result) WHERE id = ?",
                (
                    attempt.status,
                    attempt.started_at,
                    attempt.finished_at,
                    attempt.error,
                    attempt.cause.value,
                    _result_json(result),
                    attempt.id,
                ),
            )
            self._update_job(db, job)

    def save_job(self, job: Job) -> None:
        with self._tx() as db:
            self._update_job(db, job)

    @staticmethod
    def _update_job(db: sqlite3.Connection, job: Job) -> None:
        db.execute(
            "UPDATE jobs SET status = ?, updated_at = ?, wait_reason = ?, node_id = ?, branch = ?, "
            "result = ?, cancel_requested = ?, budget_from = ?, bases = ? WHERE id = ?",
            (
                job.status,
                job.updated_at,
                job.wait_reason,
                job.node_id,
                job.branch,
                _result_json(job.result),
                int(job.cancel_requested),
                job.budget_from,
                json.dumps(job.bases),
                job.id,
            ),
        )

    def retry(self, run_id: str, jobs: Sequence[Job]) -> None:
        """Jobs queued again by a user's retry, and their run running again: one transaction."""
        with self._tx() as db:
            db.execute("UPDATE runs SET status = 'running', finished_at = 0 WHERE id = ?", (run_id,))
            for job in jobs:
                self._update_job(db, job)

    def stop_jobs(self, run_id: str, reason: str, jobs: Sequence[Job]) -> None:
        """Queued jobs a run will not start (its budget is spent) and why: one transaction."""
        with self._tx() as db:
            db.execute("UPDATE runs SET reason = ? WHERE id = ?", (reason, run_id))
            for job in jobs:
                self._update_job(db, job)

    def finish_run(self, run_id: str, status: str, finished_at: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status = ?, finished_at = ? WHERE id = ?", (status, finished_at, run_id)
            )

    # --- reading ------------------------------------------------------------------------

    _JOB_COLS = (
        "id, run_id, idx, status, spec, created_at, updated_at, wait_reason, node_id, branch, result, "
        "cancel_requested, budget_from, bases"
    )
    _RUN_COLS = (  # and what the run spent: the sum of its attempts' results
        "id, name, status, created_at, finished_at, repo_url, base_commit, budget_usd, reason, "
        "(SELECT COALESCE(SUM(json_extract(a.result, '$.cost_usd')), 0) FROM attempts a "
        "JOIN jobs j ON a.job_id = j.id WHERE j.run_id = runs.id)"
    )

    def _job(self, row: tuple[Any, ...]) -> Job:
        spec = json.loads(row[4])
        placement = spec.pop("placement")
        placement["networks"] = tuple(placement["networks"])
        placement["avoid_networks"] = tuple(placement["avoid_networks"])
        repo = spec.pop("repo")
        spec["secrets"] = tuple(spec.get("secrets", ()))
        spec["depends_on"] = tuple(spec.get("depends_on", ()))
        spec["ignore_paths"] = tuple(spec.get("ignore_paths", ()))
        job = Job(
            id=row[0],
            run_id=row[1],
            index=row[2],
            status=JobStatus(row[3]),
            created_at=row[5],
            updated_at=row[6],
            wait_reason=row[7],
            node_id=row[8],
            branch=row[9],
            result=_result_from(row[10]),
            cancel_requested=bool(row[11]),
            budget_from=row[12],
            bases=tuple((ref, commit) for ref, commit in json.loads(row[13])),
            placement=JobPlacement(**placement),
            repo=Repo(**repo) if repo else None,
            **spec,
        )
        for a in self._query(
            "SELECT id, job_id, number, node_id, status, branch, created_at, started_at, finished_at, error, "
            "cause FROM attempts WHERE job_id = ? ORDER BY number",
            (job.id,),
        ):
            job.attempts.append(
                Attempt(
                    id=a[0],
                    job_id=a[1],
                    number=a[2],
                    node_id=a[3],
                    status=AttemptStatus(a[4]),
                    branch=a[5],
                    created_at=a[6],
                    started_at=a[7],
                    finished_at=a[8],
                    error=a[9],
                    cause=Cause(a[10]),
                )
            )
        return job

    def _run(self, row: tuple[Any, ...], with_jobs: bool) -> Run:
        run = Run(row[0], row[1], RunStatus(row[2]), row[3], row[4], row[5], row[6])
        run.budget_usd, run.reason, run.spent_usd = row[7], row[8], row[9]
        if with_jobs:
            rows = self._query(f"SELECT {self._JOB_COLS} FROM jobs WHERE run_id = ? ORDER BY idx", (run.id,))
            run.jobs = [self._job(r) for r in rows]
        return run

    def get_run(self, run_id: str) -> Run | None:
        rows = self._query(f"SELECT {self._RUN_COLS} FROM runs WHERE id = ?", (run_id,))
        return self._run(rows[0], with_jobs=True) if rows else None

    def list_runs(self, limit: int, jobs_up_to: int = 0) -> list[Run]:
        """The latest runs, newest first; the first of them with their jobs while these add
        up to `jobs_up_to` at most (a run's all or none)."""
        latest = "SELECT id FROM runs ORDER BY created_at DESC LIMIT ?"
        rows = self._query(f"SELECT {self._RUN_COLS} FROM runs ORDER BY created_at DESC LIMIT ?", (limit,))
        sql = f"SELECT run_id, COUNT(*) FROM jobs WHERE run_id IN ({latest}) GROUP BY run_id"
        counts, runs = dict(self._query(sql, (limit,)) if jobs_up_to > 0 else []), []
        for row in rows:
            jobs_up_to -= counts.get(row[0], 0)
            runs.append(self._run(row, with_jobs=jobs_up_to >= 0 and bool(counts)))
        return runs

    def get_job(self, job_id: str) -> Job | None:
        rows = self._query(f"SELECT {self._JOB_COLS} FROM jobs WHERE id = ?", (job_id,))
        return self._job(rows[0]) if rows else None

    def active_runs(self) -> list[Run]:
        """Runs not finished yet, with all their jobs: what a restarted coordinator resumes."""
        rows = self._query(f"SELECT {self._RUN_COLS} FROM runs WHERE status = 'running' ORDER BY created_at")
        return [self._run(r, with_jobs=True) for r in rows]

    def run_exists(self, run_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM runs WHERE id = ?", (run_id,)))

    def ended_runs(self, before: float) -> list[Run]:
        """Runs that ended at or before `before` (unix seconds), with their jobs, oldest first."""
        rows = self._query(
            f"SELECT {self._RUN_COLS} FROM runs WHERE status != 'running' AND finished_at > 0 "
            "AND finished_at <= ? ORDER BY finished_at, id",
            (before,),
        )
        return [self._run(r, with_jobs=True) for r in rows]

    def delete_run(self, run_id: str) -> bool:
        """Forget an ended run: its logs, attempts, jobs and row, in one transaction. False
        (and nothing deleted) if it is not there or still running."""
        jobs = "SELECT id FROM jobs WHERE run_id = ?"
        with self._tx() as db:
            ended = db.execute("SELECT 1 FROM runs WHERE id = ? AND status != 'running'", (run_id,))
            if ended.fetchone() is None:
                return False
            db.execute(f"DELETE FROM logs WHERE job_id IN ({jobs})", (run_id,))
            db.execute(f"DELETE FROM attempts WHERE job_id IN ({jobs})", (run_id,))
            db.execute("DELETE FROM jobs WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            return True

    # --- logs ---------------------------------------------------------------------------

    def append_logs(self, job_id: str, attempt_id: str, lines: Sequence[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO logs (job_id, attempt_id, line) VALUES (?, ?, ?)",
                [(job_id, attempt_id, line) for line in lines],
            )

    def log_count(self, job_id: str, attempt_id: str) -> int:
        rows = self._query(
            "SELECT COUNT(*) FROM logs WHERE job_id = ? AND attempt_id = ?", (job_id, attempt_id)
        )
        return int(rows[0][0])

    def logs(self, job_id: str, after_seq: int = 0, limit: int = 5000) -> list[tuple[int, str, str]]:
        """(seq, attempt_id, line) for a job, oldest first."""
        rows = self._query(
            "SELECT seq, attempt_id, line FROM logs WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (job_id, after_seq, limit),
        )
        return [(r[0], r[1], r[2]) for r in rows]
