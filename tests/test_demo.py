"""The README's one-machine command, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil

from tests.fleet import ROOT


def test_readme_demo_runs_and_leaves_nothing_running(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo" in readme
    home = tmp_path / "home"
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FLOTA_DEMO_HOME": str(home), "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "local fleet up" in out
    assert "success" in out and "failed" not in out
    branches = subprocess.run(
        ["git", "branch", "--list", "flota/*"],
        cwd=home / "demo" / "remote.git",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # The tests changed no file: that job says "no changes" and pushed no branch.
    assert len(branches) == 3
    assert len([line for line in out.splitlines() if line.startswith("r") and "no changes" in line]) == 1
    # The tasks ran in parallel on more than one node.
    nodes = {line.split()[1] for line in out.splitlines() if line.startswith("r") and " flota/" in line}
    assert len(nodes) >= 2, out
    # Nothing is left running: no daemon of this demo survives it.
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
