"""`flota node add --service system | systemd` for real: the box boots a real systemd as
PID 1 (tests/lab/systemdhost.py) with sshd inside it, and the service paths run: the unit
starts the daemon, `upgrade` restarts it through systemctl keeping its running job, and
`uninstall` stops and removes it. (launchd cannot run here: no macOS; its plists are checked
as text in tests/cli/test_install_units.py.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import __version__
from tests.lab.netlab import Lab
from tests.lab.release import release
from tests.lab.systemdhost import Systemd
from tests.lab.test_node_install import Site, _no_processes, _node, make_site, wheel_cache
from tests.lab.test_node_upgrade import _upgrade, _wait_job

__all__ = ["wheel_cache"]  # the fixture, shared with test_node_install

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]


@pytest.fixture(params=["system", "systemd"])
def service_site(
    request: pytest.FixtureRequest, lab: Lab, tmp_path: Path, wheel_cache: Path
) -> Iterator[Site]:
    with make_site(lab, tmp_path, wheel_cache, systemd=True) as made:
        made.service = request.param
        yield made


def _systemd(site: Site) -> Systemd:
    assert site.box.systemd is not None
    return site.box.systemd


def _unit(site: Site) -> tuple[list[str], str]:
    """The systemctl that manages the node's unit (the system's, or the user's), and its name."""
    if site.service == "system":
        return ["systemctl"], f"flota-node-{site.box.user}.service"
    return ["systemctl", "--user", "-M", f"{site.box.user}@"], "flota-node.service"


def _show(site: Site, *props: str) -> dict[str, str]:
    ctl, unit = _unit(site)
    out = _systemd(site).run([*ctl, "show", unit, "-p", ",".join(props)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _daemon(site: Site) -> tuple[int, str]:
    """The node daemon's pid inside the box and its cgroup (as this machine sees them)."""
    for pid, cmdline in site.box.processes().items():
        if "-m node_agent start" in cmdline:
            status = Path(f"/proc/{pid}/status").read_text()
            inner = next(line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:"))
            return int(inner), Path(f"/proc/{pid}/cgroup").read_text().strip().rsplit(":", 1)[-1]
    raise AssertionError(f"no node daemon runs on the box: {site.box.processes()}")


def _linger(site: Site) -> str:
    argv = ["loginctl", "show-user", site.box.user, "-p", "Linger", "--value"]
    return _systemd(site).run(argv, check=False).stdout.strip() or "no"


def test_the_unit_runs_the_daemon_upgrade_restarts_it_keeping_the_job_uninstall_removes_it(
    service_site: Site, tmp_path: Path
) -> None:
    site = service_site
    site.trust()
    before = site.files()
    assert _linger(site) == "no"
    added = site.add("--name", "box")
    assert added.returncode == 0, added.stderr
    assert f", service {site.service}; wheelhouse " in added.stdout, added.stdout
    node = _node(site, "box")
    assert node is not None and node["state"] == "online", node

    # systemd started the daemon: it is the unit's main process, in the unit's cgroup.
    ctl, unit = _unit(site)
    shown = _show(site, "ActiveState", "MainPID", "UnitFileState")
    assert shown["ActiveState"] == "active" and shown["UnitFileState"] == "enabled", shown
    pid, cgroup = _daemon(site)
    assert str(pid) == shown["MainPID"] and cgroup.endswith(f"/{unit}"), (pid, cgroup, shown)
    manifest = json.loads((site.box.home / ".local/share/flota/install.json").read_text())
    if site.service == "systemd":  # the user unit survives logout: add enabled linger
        assert _linger(site) == "yes" and manifest["service"]["linger"] is True

    outside = site.box.dir / "gate"  # sshd's directory: the box sees it (a bind), outside the home
    outside.mkdir()
    os.chmod(outside, 0o777)
    gate, ran = outside / "gate", outside / "ran"
    script = f"echo started; echo x >> {ran}; while [ ! -e {gate} ]; do sleep 0.05; done; echo finished"
    job_id = site.fleet.json("run", "--on", "box", script)["jobs"][0]["id"]
    deadline = time.monotonic() + 60
    while site.fleet.json("status", job_id)["status"] != "running" or not ran.exists():
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.2)

    # upgrade: SIGUSR1 (the daemon leaves its job to the keeper), then systemctl restarts the unit
    new = "9.8.0"
    up = _upgrade(site, release(tmp_path, new), "box", "--wait", "60")
    assert up.returncode == 0, up.stderr
    assert re.fullmatch(
        rf"node box upgraded from flota {re.escape(__version__)} to {new} in [\d.]+ s; its jobs kept",
        up.stdout.strip(),
    ), up.stdout
    node = _node(site, "box")
    assert node is not None and node["state"] == "online" and node["info"]["version"] == new, node
    restarted = _show(site, "ActiveState", "MainPID")
    new_pid, cgroup = _daemon(site)
    assert restarted["ActiveState"] == "active" and restarted["MainPID"] == str(new_pid), restarted
    assert new_pid != pid and cgroup.endswith(f"/{unit}"), (pid, new_pid, cgroup)
    assert site.fleet.json("status", job_id)["status"] == "running"
    gate.touch()
    job = _wait_job(site, job_id)
    assert job["status"] == "success", job
    assert [a["status"] for a in job["attempts"]] == ["success"], job["attempts"]
    assert ran.read_text() == "x\n", "the job ran once, never again"

    gone = site.flota("node", "uninstall", "box")
    assert gone.returncode == 0, gone.stderr
    shutil.rmtree(outside)
    assert site.files() == before
    assert _show(site, "LoadState")["LoadState"] == "not-found"
    if site.service == "system":
        assert _systemd(site).run(["ls", "/etc/systemd/system"]).stdout.split() == [
            "console-getty.service", "cron.service", "default.target", "getty.target", "ssh.service",
            "ssh.socket", "systemd-tmpfiles-clean.timer", "systemd-udev-trigger.service",
            "systemd-udevd-control.socket", "systemd-udevd-kernel.socket", "systemd-udevd.service",
        ]  # fmt: skip
    assert _linger(site) == "no"
    _no_processes(site, timeout=30)  # the user's systemd instance ends once linger is off
    assert _node(site, "box") is None
