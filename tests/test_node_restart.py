"""SIGUSR1, "restart, keep jobs" (what `flota node upgrade` sends): the node daemon stops
serving without saying goodbye and without stopping its jobs; the next daemon takes them
back from the journal, and each job ends with one result on its one attempt."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from cli.install.service import Layout, restart_stop
from cli.install.upgrade import plan
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
        lambda: (
            (j := fleet.json("status", job_id))["status"] not in ("running", "queued", "dispatching") and j
        ),
        timeout=30,
        what="the job's end",
    )
    assert done["status"] == "success", done
    assert [a["status"] for a in done["attempts"]] == ["success"]
    assert ran.read_text() == "x\n", "the job ran once, and was never started again"
    assert fleet.flota("logs", job_id, check=True).stdout == "started\nfinished\n"


def test_the_upgrade_stop_command_restarts_a_real_daemon_keeping_its_job(
    fleet: Fleet, tmp_path: Path
) -> None:
    """cli/install/service.py's restart_stop, as `flota node upgrade` runs it on the host:
    it finds the daemon by its daemon.json (a service has no pidfile), sends SIGUSR1 and
    waits for it to exit; a pid in the pidfile that is no node daemon is left alone."""
    fleet.start_coordinator()
    root = fleet.home / "nodes"
    proc = fleet.start_node("node", "--lost-after", "60", state=root / "node")
    other = subprocess.Popen(["sleep", "60"])
    (root / "node.pid").write_text(str(other.pid))
    gate = tmp_path / "gate"
    job_id = fleet.json("run", "--on", "node", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo done")[
        "jobs"
    ][0]["id"]
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running", what="running")
    layout = Layout(str(tmp_path), "u", "0", str(root))
    ran = subprocess.run(
        restart_stop(layout, sys.executable), shell=True, capture_output=True, text=True, timeout=60
    )
    try:
        assert ran.returncode == 0 and ran.stdout.strip() == "1", ran
        assert proc.poll() == 0
        assert other.poll() is None, "a pid that is no node daemon is not signalled"
    finally:
        other.kill()
    again = subprocess.run(restart_stop(layout, sys.executable), shell=True, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.strip() == "0", again  # nothing runs: nothing to do
    fleet.start_node("node", "--lost-after", "60", join=False, state=root / "node")
    gate.touch()
    done = wait_until(
        lambda: (j := fleet.json("status", job_id))["status"] == "success" and j, what="success"
    )
    assert [a["status"] for a in done["attempts"]] == ["success"]


def test_plan_is_empty_at_the_same_version_and_build_only() -> None:
    m = {"version": "0.3.0", "build": "1a2b3c4d5e6f7a8b", "root": "/h/.local/share/flota"}
    assert plan(m, "0.3.0", "1a2b3c4d5e6f7a8b") == []
    steps = plan(m, "0.4.0", "9999999999999999")
    assert steps[0] == "install flota 0.4.0 into /h/.local/share/flota/versions/0.4.0 (beside 0.3.0)"
    assert steps[-1] == "wait for the node to be online with flota 0.4.0; else roll back to 0.3.0"
    # Another build of the same version: an upgrade, into a directory of its own.
    steps = plan(m, "0.3.0", "5e6f7a8b00000000")
    assert steps[0] == (
        "install flota 0.3.0 (build 5e6f7a8b) into /h/.local/share/flota/versions/0.3.0+5e6f7a8b "
        "(beside 0.3.0 (build 1a2b3c4d))"
    )
    assert steps[2] == "point /h/.local/share/flota/current at versions/0.3.0+5e6f7a8b"
