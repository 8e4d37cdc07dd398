"""What a restarted node daemon does with the jobs its journal says were running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from node_agent.hub import Hub
from node_agent.journal import Journal
from node_agent.runner import Runner
from node_agent.workspace import Workspace
from protos.flota.v1 import types_pb2


def _spec(attempt: str) -> types_pb2.JobSpec:
    return types_pb2.JobSpec(job_id="r1.1", run_id="r1", attempt_id=attempt, agent="shell", command="true")


def _journaled(root: Path, attempt: str, proc: subprocess.Popen[bytes]) -> Journal:
    journal = Journal(root / "jobs")
    journal.begin(_spec(attempt))
    journal.started(attempt, proc.pid)
    return journal


def _runner(root: Path, journal: Journal) -> Runner:
    return Runner("n1", "node-1", Workspace(root / "work"), journal, Hub(), lambda: 1)


def test_restart_kills_the_orphaned_job_and_reports_it_lost(tmp_path: Path) -> None:
    env = {**os.environ, "FLOTA_ATTEMPT_ID": "r1.1.a1"}
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True, env=env)
    try:
        runner = _runner(tmp_path, _journaled(tmp_path, "r1.1.a1", orphan))
        assert orphan.wait(10) == -9
        result = runner.finished["r1.1.a1"]
        assert (result.status, result.error) == ("lost", "the node daemon restarted mid-job")
    finally:
        orphan.kill()


def test_restart_never_kills_a_group_that_is_not_the_job(tmp_path: Path) -> None:
    """After a reboot the journaled number may belong to anyone."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        runner = _runner(tmp_path, _journaled(tmp_path, "r1.1.a1", stranger))
        assert stranger.poll() is None
        assert runner.finished["r1.1.a1"].status == "lost"
    finally:
        stranger.kill()
        stranger.wait()
