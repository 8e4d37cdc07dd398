"""`flota up --local N` / `flota down`, as a user runs them, twice on the same home."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil

from tests.fleet import Fleet, wait_until


def _daemons(home: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])]


def test_up_down_up_again_on_the_same_home(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "home")
    up = fleet.flota("--json", "up", "--local", "2", "--detach", timeout=120)
    assert up.returncode == 0, up.stderr
    assert {n["info"]["name"] for n in json.loads(up.stdout)["nodes"]} == {"node-1", "node-2"}
    again = fleet.flota("up", "--local", "2", "--detach")
    assert again.returncode == 2 and "already running" in again.stderr
    assert fleet.flota("down").returncode == 0
    assert _daemons(fleet.home) == []

    # Same home again: the coordinator gets a new port; the enrolled nodes must follow it.
    up = fleet.flota("up", "--local", "2", "--detach", timeout=120)
    assert up.returncode == 0, up.stderr + up.stdout
    try:
        result = fleet.flota("run", "--follow", "-t", "true", "-t", "true")
        assert result.returncode == 0, result.stderr
    finally:
        fleet.flota("down")
    assert _daemons(fleet.home) == []


def test_down_never_signals_a_process_that_is_not_ours(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "home")
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        local = fleet.home / "local"
        local.mkdir(parents=True)
        # A stale pid file, e.g. after a reboot, whose numbers now belong to others.
        (local / "fleet.json").write_text(
            json.dumps({"coordinator": bystander.pid, "nodes": [bystander.pid]})
        )
        assert fleet.flota("down").returncode == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_local_fleet_survives_a_coordinator_reset_and_keeps_grpc_quiet_to_itself(tmp_path: Path) -> None:
    import shutil

    fleet = Fleet(tmp_path / "home")
    assert fleet.flota("up", "--local", "1", "--detach", timeout=120).returncode == 0
    assert fleet.flota("down").returncode == 0
    shutil.rmtree(fleet.home / "coordinator")  # a new CA: the enrolled node must join again
    env = {k: v for k, v in fleet.env.items() if k != "GRPC_VERBOSITY"}  # the user set none
    up = subprocess.run(
        [fleet.python, "-m", "cli", "up", "--local", "1", "--detach"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        result = subprocess.run(
            [fleet.python, "-m", "cli", "run", "--follow", "env | grep -c GRPC_VERBOSITY || true"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        log = fleet.flota("status").stdout.split()
        run_id = next(word for word in log if word.startswith("r") and len(word) == 7)
        job_log = fleet.flota("logs", f"{run_id}.1").stdout
        assert job_log.strip() == "0"  # the CLI's own gRPC quiet did not reach the job
    finally:
        fleet.flota("down")


def _running(fleet: Fleet, command: str) -> dict[str, object]:
    run = fleet.json("run", command, check=True)
    job_id = f"{run['id']}.1"
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running", 60, "job running")
    return fleet.json("status", job_id)  # type: ignore[no-any-return]


def test_down_names_the_running_jobs_it_stops(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "home")
    assert fleet.flota("up", "--local", "1", "--detach", timeout=120).returncode == 0
    try:
        job = _running(fleet, "sleep 300")
        down = fleet.flota("down")
        assert down.returncode == 0, down.stderr
        lines = down.stdout.splitlines()
        assert f"stopping job {job['id']} {job['name']} (running on node-1)" in lines, down.stdout
        assert any("new attempt" in line for line in lines) and "stopped 2 daemons" in lines
    finally:
        fleet.flota("down")
    assert _daemons(fleet.home) == []


def test_down_wait_waits_only_as_long_as_told(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "home")
    assert fleet.flota("up", "--local", "1", "--detach", timeout=120).returncode == 0
    try:
        job = _running(fleet, "sleep 300")
        down = fleet.flota("down", "--wait", "--timeout", "1")
        assert down.returncode == 0, down.stderr
        assert "waiting for 1 running job (" in down.stderr and "stopping anyway" in down.stderr
        assert f"stopping job {job['id']} {job['name']} (running on node-1)" in down.stdout.splitlines()
        assert "stopped 2 daemons" in down.stdout
    finally:
        fleet.flota("down")
    assert _daemons(fleet.home) == []


def test_down_wait_lets_a_running_job_finish_first(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "home")
    assert fleet.flota("up", "--local", "1", "--detach", timeout=120).returncode == 0
    try:
        job = _running(fleet, "sleep 3")
        down = fleet.flota("--json", "down", "--wait")
        assert down.returncode == 0, down.stderr
        assert json.loads(down.stdout) == {"stopped": 2, "jobs_stopped": []}
        assert "waiting for 1 running job (" in down.stderr
        # The next `up` finds the job done on its first attempt, not re-run as attempt 2.
        assert fleet.flota("up", "--local", "1", "--detach", timeout=120).returncode == 0
        done = fleet.json("status", str(job["id"]))
        assert (done["status"], len(done["attempts"])) == ("success", 1), done
    finally:
        fleet.flota("down")
    assert _daemons(fleet.home) == []
