"""`flota node upgrade` against a real OpenSSH server on a lab host (issue 15), with the
site of tests/lab/test_node_install.py.

The "new version" is real (tests/lab/release.py): a copy of this source tree with another
FLOTA_VERSION, run as the CLI. `upgrade` builds flota's wheel from the source of the CLI
that runs it, so the copy's wheel is what the host gets. A broken new version is such a
copy whose node daemon exits at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cli import __version__
from cli.install.wheelhouse import source_hash
from tests.fleet import ROOT
from tests.lab.release import release
from tests.lab.test_node_install import Site, _no_processes, _node, site, wheel_cache

__all__ = ["site", "wheel_cache"]  # the fixtures, shared with test_node_install

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]


def _upgrade(site: Site, release: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`flota node upgrade` run by the CLI of `release` (another source tree)."""
    env = {"HOME": str(site.dev_home), "XDG_CACHE_HOME": str(site.cache), **release}
    return site.fleet.flota("node", "upgrade", *args, timeout=600, env=env)


def _wait_job(site: Site, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job: dict[str, Any] = site.fleet.json("status", job_id)
        if job["status"] not in ("queued", "dispatching", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end")


def test_upgrade_keeps_the_running_job_and_a_broken_version_rolls_back(site: Site, tmp_path: Path) -> None:
    site.trust()
    before = site.files()
    added = site.add("--name", "box")
    assert added.returncode == 0, added.stderr
    root = site.box.home / ".local/share/flota"
    same = site.flota("node", "upgrade", "box")
    assert same.returncode == 0, same.stderr
    assert same.stdout.strip() == f"node box is already at flota {__version__}; nothing changed"

    # Another build of the same version (a dev tree): add calls it an upgrade, and upgrade does it.
    dev = release(tmp_path, __version__, dev=True)
    ours, theirs = source_hash(ROOT)[:8], source_hash(Path(dev["PYTHONPATH"]))[:8]
    env = {"HOME": str(site.dev_home), "XDG_CACHE_HOME": str(site.cache), **dev}
    args = [
        "node",
        "add",
        site.box.target,
        "--identity",
        str(site.box.key),
        "--service",
        "none",
        "--name",
        "box",
    ]
    refused = site.fleet.flota(*args, env=env, timeout=300)
    assert refused.returncode == 2, refused
    assert refused.stderr.strip().splitlines()[-1] == (
        f"flota: flota {__version__} ({ours}) is installed on {site.box.target} as node box; installing "
        f"{__version__} ({theirs}) is an upgrade: flota node upgrade NAME (or flota node uninstall first)"
    )
    up = _upgrade(site, dev, "box", "--wait", "60")
    assert up.returncode == 0, up.stderr
    v = re.escape(__version__)
    assert re.fullmatch(
        rf"node box upgraded from flota {v} \(build {ours}\) to {v} \(build {theirs}\) in [\d.]+ s; "
        "its jobs kept",
        up.stdout.strip(),
    ), up.stdout
    node = _node(site, "box")
    assert node is not None and node["state"] == "online" and node["info"]["build"].startswith(theirs), node
    assert os.readlink(root / "current") == f"versions/{__version__}+{theirs}"
    again = _upgrade(site, dev, "box")
    assert again.stdout.strip() == f"node box is already at flota {__version__}; nothing changed", again
    # This CLI (the other build) shows the node's build beside its version; the dev CLI does not.
    shown = site.flota("version").stdout
    assert f"node box  {__version__} (build {theirs}) (protocol " in shown, shown
    assert f"node box  {__version__} (protocol " in site.fleet.flota("version", env=env).stdout

    outside = site.box.home.parent / f"{site.box.home.name}-gate"
    outside.mkdir()
    os.chmod(outside, 0o777)
    gate, ran = outside / "gate", outside / "ran"
    script = f"echo started; echo x >> {ran}; while [ ! -e {gate} ]; do sleep 0.05; done; echo finished"
    job_id = site.fleet.json("run", "--on", "box", script)["jobs"][0]["id"]
    deadline = time.monotonic() + 60
    while site.fleet.json("status", job_id)["status"] != "running" or not ran.exists():
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.2)

    new = "9.8.0"
    up = _upgrade(site, release(tmp_path, new), "box", "--wait", "60")
    assert up.returncode == 0, up.stderr
    assert re.fullmatch(
        rf"node box upgraded from flota {re.escape(__version__)} to {new} in [\d.]+ s; its jobs kept",
        up.stdout.strip(),
    ), up.stdout
    node = _node(site, "box")
    assert node is not None and node["state"] == "online" and node["info"]["version"] == new, node
    assert os.readlink(root / "current") == f"versions/{new}"
    assert "restarting: 1 jobs keep running" in (root / "node.log").read_text()  # SIGUSR1, not a kill
    assert site.fleet.json("status", job_id)["status"] == "running"
    gate.touch()
    job = _wait_job(site, job_id)
    assert job["status"] == "success", job
    assert [a["status"] for a in job["attempts"]] == ["success"], job["attempts"]
    assert ran.read_text() == "x\n", "the job ran once, never again"
    assert site.fleet.flota("logs", job_id, check=True).stdout == "started\nfinished\n"
    manifest = json.loads((root / "install.json").read_text())
    assert manifest["version"] == new and manifest["versions"] == [
        __version__,
        f"{__version__}+{theirs}",
        new,
    ]
    assert [(u["from"], u["to"], u["state"]) for u in manifest["upgrades"]] == [
        (__version__, __version__, "upgraded"),
        (__version__, new, "upgraded"),
    ]

    broken = "9.9.0"
    bad = _upgrade(site, release(tmp_path, broken, broken=True), "box", "--wait", "8")
    assert bad.returncode == 2, bad
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith(f"flota: the node did not come online with flota {broken} within 8 s"), last
    assert last.endswith(f"; rolled back: node box runs flota {new} again"), last
    node = _node(site, "box")
    assert node is not None and node["state"] == "online" and node["info"]["version"] == new, node
    assert os.readlink(root / "current") == f"versions/{new}"
    assert not (root / "versions" / broken).exists()
    manifest = json.loads((root / "install.json").read_text())
    assert manifest["version"] == new and manifest["versions"] == [
        __version__,
        f"{__version__}+{theirs}",
        new,
    ]
    assert manifest["upgrades"][-1]["state"] == "rolled back"

    every = _upgrade(site, release(tmp_path, new), "--all")  # the copy made above, again
    assert every.returncode == 0, every.stderr
    assert every.stdout.strip() == f"node box is already at flota {new}; nothing changed"

    # uninstall removes every version an upgrade added
    gone = site.flota("node", "uninstall", "box")
    assert gone.returncode == 0, gone.stderr
    shutil.rmtree(outside)
    assert site.files() == before
    _no_processes(site)
