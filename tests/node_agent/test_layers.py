"""The node's core imports no wire types: protos stop at the edges (convert, servicer, hub,
journal files, registration)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fleet import ROOT

CORE = ["node_agent.lifecycle", "node_agent.models", "node_agent.attempt", "node_agent.agents.launch"]


@pytest.mark.parametrize("module", CORE)
def test_core_modules_load_no_grpc_or_stubs(module: str) -> None:
    probe = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')"
        " or m.startswith('protos.flota'))\n"
        "print(' '.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
