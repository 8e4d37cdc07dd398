"""The committed stubs are what scripts/gen_protos.py makes from the .proto files."""

from __future__ import annotations

import subprocess
import sys

from tests.fleet import ROOT


def test_generated_stubs_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_on_stale_stubs(tmp_path) -> None:
    """--check must be able to fail: run it on a copy with one edited stub."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", copy / "protos")
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    stub = copy / "protos" / "flota" / "v1" / "types_pb2.py"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    result = subprocess.run(
        [sys.executable, str(copy / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "stale stubs: types_pb2.py" in result.stderr
