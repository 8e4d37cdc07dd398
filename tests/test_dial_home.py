"""Dial-home end to end on loopback: a node started with --dial-home announces no address
(so the coordinator has nothing to dial) and opens the link itself. Jobs, logs, results,
cancels and cleanup go over that one stream; `flota nodes` says which way it goes; a
removed node is refused when it dials again and stops. Real daemons, real mTLS, a real
bare git remote. The NAT case (the automatic fallback) is tests/lab/test_nat.py."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil

from tests.fleet import Fleet, git, make_repo, wait_until

REMOVED = "flota: this node was removed from the fleet; join again with a new token"


def _ours(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_a_dial_home_node_runs_jobs_and_cancels_over_its_own_link(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    state = fleet.join("roamer")
    stderr = fleet.home / "roamer.stderr"
    with open(stderr, "wb") as err:  # as a user starts it: the CLI, which execs the daemon
        proc = subprocess.Popen(
            [fleet.python, "-m", "cli", "node", "start", "--listen", "127.0.0.1:0", "--dial-home"]
            + ["--state-dir", str(state), "--name", "roamer", "--no-mdns", "--slots", "2"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=fleet.env,
            cwd=fleet.home,
        )
    fleet.procs["roamer"], fleet.logs["roamer"] = proc, stderr
    node = fleet.wait_node("roamer", "online")
    port = json.loads((state / "daemon.json").read_text())["port"]
    assert node["link"] == "home", node
    assert node["info"]["addresses"] == []  # nothing to dial
    # The address shown is where the node's connection comes from, not its listening port.
    assert node["address"].startswith("127.0.0.1:") and node["address"] != f"127.0.0.1:{port}", node
    table = fleet.flota("nodes", check=True).stdout
    header, row = table.splitlines()[:2]
    assert "LINK" in header.split() and "home" in row.split(), table

    # A job runs there, its log and result come back, its branch is pushed.
    work, remote = make_repo(tmp_path / "repo")
    result = fleet.flota(
        "--json", "run", "--repo", str(work), "echo over-the-home-link > home.txt; echo hi", "--follow"
    )
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    (job,) = run["jobs"]
    assert (job["status"], job["node_name"]) == ("success", "roamer"), job
    assert git("show", f"{job['branch']}:home.txt", cwd=remote) == "over-the-home-link\n"
    assert fleet.flota("logs", job["id"], check=True).stdout == "hi\n"
    # The node forgot the result once the coordinator had it: the ack came over the link.
    wait_until(lambda: not list((state / "jobs").iterdir()), what="the journal emptied")

    # Cancel: the job's processes are gone and it ends cancelled.
    marker = f"flota-home-{time.time_ns()}"
    started = fleet.json("run", f"sleep 300; : {marker}")
    job_id = started["jobs"][0]["id"]
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running" and _ours(marker), what="running")
    assert fleet.json("cancel", job_id)["cancelled"] == [job_id]
    final = wait_until(
        lambda: (j := fleet.json("status", job_id))["status"] in ("cancelled", "failed", "success") and j,
        what="cancelled",
    )
    assert final["status"] == "cancelled", final
    wait_until(lambda: not _ours(marker), timeout=10, what="the job's processes gone")

    # Cleanup reaches the node over the link too.
    cleaned = fleet.json("cleanup", run["id"])
    assert cleaned == {"worktrees_removed": 1, "nodes_unreachable": []}, cleaned

    # Removed: its link is closed, it dials again, is refused, and stops with one line.
    fleet.json("node", "remove", "roamer")
    assert proc.wait(60) == 2
    text = stderr.read_text(errors="replace")
    assert text.splitlines()[-1] == REMOVED, text
    assert "Traceback" not in text


def test_a_coordinator_restart_brings_the_home_link_back(fleet: Fleet, tmp_path: Path) -> None:
    """The node dials again on its own (nobody can dial it), and a job finished while the
    coordinator was away is collected over the new link."""
    fleet.start_coordinator("--listen", "127.0.0.1:0")
    coord = json.loads((fleet.home / "coordinator" / "coordinator.json").read_text())
    port = coord["local"].rpartition(":")[2]
    fleet.start_node("roamer", "--dial-home")
    gate = tmp_path / "gate"
    job_id = fleet.json("run", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo finished")["jobs"][0]["id"]
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running", what="running")
    fleet.stop("coordinator")
    gate.touch()
    time.sleep(1.0)  # the job ends while no coordinator listens: the node keeps its result
    fleet.start_coordinator(listen=f"127.0.0.1:{port}")
    node = fleet.wait_node("roamer", "online", timeout=30)
    assert node["link"] == "home"
    job = wait_until(
        lambda: (j := fleet.json("status", job_id))["status"] == "success" and j, what="collected"
    )
    assert fleet.flota("logs", job["id"], check=True).stdout == "finished\n"
