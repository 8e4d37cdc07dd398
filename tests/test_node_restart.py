"""SIGUSR1, "restart, keep jobs" (what `flota node upgrade` sends): the node daemon stops
serving without saying goodbye and without stopping its jobs; the next daemon takes them
back from the journal, and each job ends with one result on its one attempt."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.fleet import Fleet, wait_until


def test_a_restart_keeps_the_running_job(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("keeper", "--lost-after", "60")
    gate, ran = tmp_path / "gate", tmp_path / "ran"
    script = f"echo started; echo x >> {ran}; while [ ! -e {gate} ]; do sleep 0.05; done; echo finished"
    job_id = fleet.json("run", "--on", "keeper", script)["jobs"][0]["id"]
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running", what="running")

    assert fleet.stop("keeper", signal.SIGUSR1) == 0
    assert "restarting: 1 jobs keep running" in fleet.log("keeper")
    assert "could not say goodbye" not in fleet.log("keeper")
    job = fleet.json("status", job_id)
    assert job["status"] == "running", job  # no goodbye, no stop: the coordinator lost nothing

    fleet.start_node("keeper", "--lost-after", "60", join=False)
    gate.touch()
    done = wait_until(
        lambda: (j := fleet.json("status", job_id))["status"] not in ("running", "queued", "dispatching")
        and j,
        timeout=30,
        what="the job's end",
    )
    assert done["status"] == "success", done
    assert [a["status"] for a in done["attempts"]] == ["success"]
    assert ran.read_text() == "x\n", "the job ran once, and was never started again"
    assert fleet.flota("logs", job_id, check=True).stdout == "started\nfinished\n"
