"""Another flota release, for real: a copy of this source tree whose protos/contract.py says
another FLOTA_VERSION (with pyproject.toml and README.md, so `flota node upgrade` run from it
builds its wheel), run as the CLI through PYTHONPATH. A broken release's node daemon exits
at once; a dev one is the same version of other source (another build). Used by the upgrade
tests and scripts/bench_install.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.fleet import ROOT

__all__ = ["release"]


def release(parent: Path, version: str, broken: bool = False, dev: bool = False) -> dict[str, str]:
    """The environment that runs the CLI of flota `version` (made under `parent` once);
    `dev`: another build of it (one source file differs, the version does not)."""
    copy = parent / f"flota-{version}{'-dev' if dev else ''}"
    if copy.exists():
        return {"PYTHONPATH": str(copy)}
    for package in ("protos", "coordinator", "node_agent", "cli"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, copy / name)
    contract = copy / "protos" / "contract.py"
    text, n = re.subn(
        r"^FLOTA_VERSION = .*$", f'FLOTA_VERSION = "{version}"', contract.read_text(), count=1, flags=re.M
    )
    assert n == 1
    contract.write_text(text)
    if broken:
        (copy / "node_agent" / "__main__.py").write_text("import sys\nsys.exit(1)\n")
    if dev:
        init = copy / "node_agent" / "__init__.py"
        init.write_text(init.read_text() + "# a dev build\n")
    return {"PYTHONPATH": str(copy)}
