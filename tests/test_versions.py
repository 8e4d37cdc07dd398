"""Version skew is explicit (issue 15): a coordinator takes nodes that speak its protocol or
the one before, and refuses others at registration with one line naming both versions and
what to upgrade. The other release is this source tree copied with other protocol numbers
in protos/contract.py, run as a real daemon from the copy."""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

import pytest

from protos.contract import FLOTA_VERSION, OLDEST_PROTOCOL, PROTOCOL
from tests.fleet import ROOT, Fleet, wait_until

pytestmark = pytest.mark.timeout(120)


def release(tmp_path: Path, version: str, protocol: int, oldest: int) -> dict[str, str]:
    """The environment that runs flota `version` (speaking `protocol`, taking `oldest`..)."""
    copy = tmp_path / f"flota-{version}"
    for package in ("protos", "coordinator", "node_agent", "cli"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    contract = copy / "protos" / "contract.py"
    text = contract.read_text()
    for name, value in (
        ("FLOTA_VERSION", f'"{version}"'),
        ("PROTOCOL", protocol),
        ("OLDEST_PROTOCOL", oldest),
    ):
        text, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", text, count=1, flags=re.M)
        assert n == 1, name
    contract.write_text(text)
    return {"PYTHONPATH": str(copy)}


def test_a_node_newer_than_the_coordinator_is_refused_by_name(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    newer = release(tmp_path, "9.0.0", PROTOCOL + 1, PROTOCOL)
    node = fleet.start_node("next", env=newer, wait=False)
    assert node.wait(30) == 2
    said = (
        f"flota: node next (flota 9.0.0) speaks protocol {PROTOCOL + 1}; this coordinator "
        f"(flota {FLOTA_VERSION}) takes protocols {OLDEST_PROTOCOL} to {PROTOCOL}: "
        "upgrade the coordinator to flota 9.0.0 or later"
    )
    assert fleet.log("next").rstrip().splitlines()[-1] == said, fleet.log("next")
    listed = fleet.nodes()["next"]
    assert listed["refused"] == said.removeprefix("flota: ") and listed["state"] != "online"
    assert "refused (protocol)" in fleet.flota("nodes", check=True).stdout
    assert "refused: upgrade one side" in fleet.flota("version", check=True).stdout


def test_an_upgraded_coordinator_refuses_a_node_too_old_for_it(fleet: Fleet, tmp_path: Path) -> None:
    """The fleet as it is upgraded: the coordinator first, to a release two protocols on.
    The running node loses its session, registers again, is refused, and stops (exit 2)."""
    api = fleet.start_coordinator()["api"]
    node = fleet.start_node("old")
    done = fleet.json("run", "echo before")
    wait_until(lambda: fleet.json("status", done["id"])["status"] == "success", what="a job before")
    fleet.stop("coordinator", signal.SIGTERM)
    future = release(tmp_path, "2.0.0", PROTOCOL + 2, PROTOCOL + 1)
    fleet.start_coordinator(listen=api, env=future)
    assert node.wait(40) == 2, fleet.log("old")
    said = (
        f"flota: node old (flota {FLOTA_VERSION}) speaks protocol {PROTOCOL}; this coordinator "
        f"(flota 2.0.0) takes protocols {PROTOCOL + 1} to {PROTOCOL + 2}: "
        "upgrade the node (flota node upgrade old)"
    )
    assert fleet.log("old").rstrip().splitlines()[-1] == said, fleet.log("old")
    version = fleet.json("version", check=True)
    assert version["coordinator"] == {
        "version": "2.0.0",
        "protocol": PROTOCOL + 2,
        "oldest_protocol": PROTOCOL + 1,
    }
    assert version["nodes"][0]["refused"] == said.removeprefix("flota: ")
    pinned = fleet.json("run", "--on", "old", "echo never")["jobs"][0]
    assert pinned["status"] == "queued"  # never placed on it


def test_the_previous_protocol_is_taken(fleet: Fleet, tmp_path: Path) -> None:
    """A node one protocol behind still works: upgrade the coordinator, then node by node."""
    fleet.start_coordinator()
    fleet.start_node("behind", env=release(tmp_path, "0.0.9", OLDEST_PROTOCOL, OLDEST_PROTOCOL))
    run = fleet.json("run", "echo works")
    wait_until(lambda: fleet.json("status", run["id"])["status"] == "success", what="a job on the older node")
    node = fleet.json("version", check=True)["nodes"][0]
    assert (node["version"], node["protocol"], node["refused"]) == ("0.0.9", OLDEST_PROTOCOL, "")
