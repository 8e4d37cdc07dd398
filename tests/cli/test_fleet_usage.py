"""The CLI against a real fleet: a port already in use, `flota logs RUN`, `flota version`,
and `flota node start` passing its options on (issue 14, defects 11 and 13, version)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cli import __version__
from cli.install.wheelhouse import local_build
from protos.contract import OLDEST_PROTOCOL, PROTOCOL
from tests.fleet import Fleet, wait_until


def _one_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_a_port_in_use_is_one_line_for_both_daemons(fleet: Fleet, tmp_path: Path) -> None:
    ready = fleet.start_coordinator()
    port = int(str(ready["api"]).rsplit(":", 1)[1])
    other = Fleet(tmp_path / "other")  # its own state: only the port is shared
    coordinator = other.flota(
        "coordinator", "start", "--listen", f"127.0.0.1:{port}", "--no-mdns", timeout=60
    )
    assert coordinator.returncode == 2
    line = _one_line(coordinator)
    assert line == f"flota: cannot listen on 127.0.0.1:{port}: port already in use", line
    state = fleet.join("n1")
    node = fleet.flota(
        "node", "start", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}", "--no-mdns", timeout=60
    )
    assert node.returncode == 2
    assert _one_line(node) == f"flota: cannot listen on 127.0.0.1:{port}: port already in use"
    for out in (coordinator, node):
        assert "add_port" not in out.stderr and "GRPC_VERBOSITY" not in out.stderr


def test_logs_of_a_run_print_every_job_prefixed_and_version_lists_the_nodes(fleet: Fleet) -> None:
    fleet.start_coordinator()
    # Through `flota node start`: its declared options reach the daemon.
    fleet.join("n1")
    node = subprocess.Popen(
        [
            fleet.python, "-m", "cli", "node", "start", "--state-dir", str(fleet.home / "nodes" / "n1"),
            "--listen", "127.0.0.1:0", "--no-mdns", "--slots", "2", "--label", "tier=fast",
        ],
        env=fleet.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        info = fleet.wait_node("n1", "online")["info"]
        assert info["slots"] == 2 and info["labels"] == {"tier": "fast"}
        run = fleet.json(
            "run", "--task", "echo one; echo two", "--task", "echo three", "--follow", check=True
        )
        ids = [j["id"] for j in run["jobs"]]
        out = fleet.flota("logs", run["id"], check=True)
        assert out.stdout.splitlines() == [f"{ids[0]} | one", f"{ids[0]} | two", f"{ids[1]} | three"]
        lines = [
            json.loads(line)
            for line in fleet.flota("--json", "logs", run["id"], check=True).stdout.splitlines()
        ]
        assert [(x["job"], x["line"]) for x in lines] == [(ids[0], "one"), (ids[0], "two"), (ids[1], "three")]
        followed = fleet.flota("logs", "--follow", run["id"], check=True)
        assert sorted(followed.stdout.splitlines()) == sorted(out.stdout.splitlines())
        # A job id still prints that job alone, unprefixed.
        assert fleet.flota("logs", ids[1], check=True).stdout == "three\n"

        version = fleet.flota("version", check=True).stdout
        assert f"cli          {__version__} (protocol {PROTOCOL})" in version
        assert f"node n1  {__version__} (protocol {PROTOCOL}, online)" in version
        assert f"coordinator  {__version__} (protocol {PROTOCOL}; takes nodes speaking" in version
        data = fleet.json("version", check=True)
        assert data == {
            "cli": __version__,
            "build": local_build(),  # this source tree's digest
            "protocol": PROTOCOL,
            "coordinator": {"version": __version__, "protocol": PROTOCOL, "oldest_protocol": OLDEST_PROTOCOL},
            "nodes": [
                {
                    "name": "n1",
                    "version": __version__,
                    "build": "",
                    "protocol": PROTOCOL,
                    "state": "online",
                    "refused": "",
                }
            ],
        }
    finally:
        node.terminate()
        node.wait(15)
    wait_until(lambda: node.poll() is not None, what="node stopped")
