"""A database the coordinator cannot write (here: another process holds SQLite's write
lock, as a backup tool or a second coordinator on the same state would) gives every admin
call one clear line and a non-zero exit, never UNKNOWN or a traceback; the coordinator
goes on, and the same calls work once the lock is gone."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import Fleet

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        yield f
    finally:
        f.close()


def test_admin_calls_on_a_locked_database_fail_with_one_clear_line(fleet: Fleet) -> None:
    fleet.start_coordinator()
    fleet.start_node("n1")
    calls = [
        ("token", "create"),
        ("node", "drain", "n1"),
        ("run", "true"),
        ("node", "remove", "n1"),
    ]
    holder = sqlite3.connect(fleet.home / "coordinator" / "flota.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # every other writer now waits, then fails
    try:
        for args in calls:
            result = fleet.flota(*args)
            out = result.stderr + result.stdout
            assert result.returncode == 2, (args, out)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert lines == ["flota: the coordinator's database failed: database is locked"], (args, out)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for args in calls:  # nothing was half done: each works now, in the same order
        fleet.flota(*args, check=True)
    assert "Traceback" not in fleet.log("coordinator")
