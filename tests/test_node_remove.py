"""`flota node remove`: a revoked node's certificate is refused, it gets no more work,
what it was running is stopped there and given up (retried where its rules allow), and
its daemon, refused at its next registration, stops with one line and exit 2."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from protos.channels import client_options
from protos.contract import COORDINATOR_SERVER_NAME
from protos.flota.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
from tests.fleet import Fleet, wait_until

pytestmark = pytest.mark.timeout(120)

REMOVED = "flota: this node was removed from the fleet; join again with a new token"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        yield f
    finally:
        f.close()


def register_as(fleet: Fleet, node: str, node_id: str) -> grpc.RpcError | None:
    """RegisterNode with the node's own (enrolled, then revoked) certificate."""
    ident = fleet.home / "nodes" / node / "identity"
    address = (ident / "coordinator").read_text().strip()
    creds = grpc.ssl_channel_credentials(
        (ident / "ca.pem").read_bytes(), (ident / "node.key").read_bytes(), (ident / "node.pem").read_bytes()
    )
    with grpc.secure_channel(address, creds, options=client_options(COORDINATOR_SERVER_NAME)) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        info = types_pb2.NodeInfo(id=node_id, name=node, addresses=["127.0.0.1:9"])
        try:
            stub.RegisterNode(coordinator_pb2.RegisterNodeRequest(info=info), timeout=10)
        except grpc.RpcError as exc:
            return exc
    return None


def running(tag: str) -> bool:
    return any(tag in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


def test_removed_node_is_refused_and_its_job_given_up(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("keep")
    fleet.start_node("gone", "--label", "first=yes")
    marker = tmp_path / "ran-on"
    tag = f"flota-rm-{time.time_ns()}"
    command = f'echo "$FLOTA_NODE_NAME" >> {marker}; [ "$FLOTA_NODE_NAME" = keep ] || sleep 300; : {tag}'
    job_id = fleet.json("run", "--label", "first=yes", "--retries", "1", command)["jobs"][0]["id"]
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running", what="running on gone")
    gone_id = fleet.nodes()["gone"]["info"]["id"]
    assert register_as(fleet, "gone", gone_id) is None  # enrolled: accepted

    out = fleet.json("node", "remove", "gone")
    assert (out["name"], out["id"], out["attempts_given_up"]) == ("gone", gone_id, [f"{job_id}.a1"])

    assert "gone" not in fleet.nodes()
    err = register_as(fleet, "gone", gone_id)
    assert err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == "this certificate is not the one enrolled"
    # The job the node ran was stopped there; the node daemon itself lives on, unused.
    job = wait_until(lambda: (j := fleet.json("status", job_id))["attempts"] and j, what="job state")
    assert job["attempts"][0]["status"] == "lost"
    assert job["attempts"][0]["error"] == "node gone was removed"
    wait_until(lambda: not running(tag), what="the job stopped on the removed node")
    assert "Traceback" not in fleet.log("gone")
    # New work never goes there, and a run pinned to it is refused.
    pinned = fleet.flota("run", "--on", "gone", "true")
    assert pinned.returncode == 2 and "unknown node 'gone'" in pinned.stderr
    again = fleet.flota("node", "remove", "gone")
    assert again.returncode == 2 and again.stderr.strip() == "flota: no node 'gone' (see: flota nodes)"


def test_a_removed_nodes_daemon_stops_with_one_line_and_exit_2(fleet: Fleet, tmp_path: Path) -> None:
    """The daemon (started as `flota node start`, which execs it) learns of its removal at
    its next registration: it stops as on SIGTERM (its job stopped too) and says why once,
    instead of retrying forever."""
    fleet.start_coordinator()
    state = fleet.join("gone")
    stderr = fleet.home / "gone.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [fleet.python, "-m", "cli", "node", "start", "--listen", "127.0.0.1:0"]
            + ["--state-dir", str(state), "--name", "gone", "--no-mdns"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=fleet.env,
            cwd=fleet.home,
        )
    fleet.procs["gone"], fleet.logs["gone"] = proc, stderr  # fleet.close() stops it if we fail
    fleet.wait_node("gone", "online")
    tag = f"flota-rm-{time.time_ns()}"
    job_id = fleet.json("run", "--on", "gone", f"sleep 300; : {tag}")["jobs"][0]["id"]
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running", what="running on gone")

    fleet.json("node", "remove", "gone")

    assert proc.wait(90) == 2
    text = stderr.read_text(errors="replace")
    lines = text.splitlines()
    assert lines.count(REMOVED) == 1 and lines[-1] == REMOVED, text
    assert sum("removed from the fleet" in line for line in lines) == 1, text
    assert "Traceback" not in text
    assert not running(tag)  # stopped as on a normal stop, not left behind


def test_a_removed_node_that_joins_again_with_its_own_state_comes_back_online(fleet: Fleet) -> None:
    """As its stop line says: a new token, the same state directory (the same node id: what
    `flota node uninstall --keep-state` then `node add` does) and it is a node again, without
    a coordinator restart."""
    fleet.start_coordinator()
    fleet.start_node("back")
    node_id = fleet.nodes()["back"]["info"]["id"]
    fleet.json("node", "remove", "back")
    assert fleet.procs["back"].wait(90) == 2
    fleet.start_node("back")  # joins again (a new token) with the same state directory
    assert fleet.nodes()["back"]["info"]["id"] == node_id
