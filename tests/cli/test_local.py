"""`flota up --local N` / `flota down`, as a user runs them, twice on the same home."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil

from tests.fleet import Fleet


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
