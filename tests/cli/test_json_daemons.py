"""--json on the commands that start or enroll daemons: one JSON line a script can read."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.fleet import Fleet


def _first_line(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the daemon printed nothing"
    data: dict[str, object] = json.loads(line)
    return data


def test_daemons_and_join_speak_json(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "home")
    coordinator = subprocess.Popen(
        [fleet.python, "-m", "cli", "--json", "coordinator", "start", "--listen", "127.0.0.1:0", "--no-mdns"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=fleet.env,
    )
    node = None
    try:
        ready = _first_line(coordinator)
        assert ready["event"] == "ready" and ready["pid"] == coordinator.pid
        assert str(ready["local"]).startswith("127.0.0.1:") and len(str(ready["ca_fingerprint"])) == 64
        address, token = fleet.token()
        state = tmp_path / "node"
        joined = fleet.flota(
            "--json", "node", "join", address, "--token", token, "--name", "n1", "--state-dir", str(state)
        )
        assert joined.returncode == 0, joined.stderr
        info = json.loads(joined.stdout)
        assert info["event"] == "joined" and info["name"] == "n1"
        assert info["id"] == (state / "identity" / "id").read_text().strip()
        node = subprocess.Popen(
            [
                fleet.python,
                "-m",
                "cli",
                "--json",
                "node",
                "start",
                "--listen",
                "127.0.0.1:0",
                "--no-mdns",
                "--state-dir",
                str(state),
                "--network",
                "home",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=fleet.env,
        )
        ready = _first_line(node)
        assert (ready["event"], ready["id"], ready["name"], ready["network"]) == (
            "ready",
            info["id"],
            "n1",
            "home",
        )
        assert ready["addresses"] == [f"127.0.0.1:{ready['port']}"]
    finally:
        for proc in (node, coordinator):
            if proc is not None:
                proc.terminate()
                proc.wait(15)
    down = fleet.flota("--json", "down")
    assert down.returncode == 0 and json.loads(down.stdout) == {"stopped": 0}
