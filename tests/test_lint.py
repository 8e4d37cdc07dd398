"""House rules the tools can check: ruff (lint and format) and mypy --strict."""

from __future__ import annotations

import subprocess
import sys

from tests.fleet import ROOT


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_lint_and_format() -> None:
    lint = _tool("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _tool("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict() -> None:
    result = _tool(
        "mypy",
        "coordinator",
        "node_agent",
        "cli",
        "protos/contract.py",
        "protos/peer.py",
        "protos/channels.py",
        "protos/limits.py",
        "protos/entry.py",
        "protos/statelock.py",
    )
    assert result.returncode == 0, result.stdout + result.stderr
