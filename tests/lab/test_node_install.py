"""`flota node add` / `uninstall` against a real OpenSSH server on a lab host (issue 15).

The workstation host "ws" runs the coordinator, the CLI and a git daemon serving the
bare remote (git://, so the node's user and root both reach it); the host "box" runs sshd
and has a throwaway user whose home is the host's file system as far as the install goes.
The CLI's own HOME (its ~/.ssh) is a temporary directory; its wheel cache is shared by the
tests of a session (so only the first builds the wheelhouse).

systemd is not PID 1 here, so the node runs with `--service none` end to end; the unit
files are checked in tests/cli/test_install_units.py, and the preflight's refusal when
there is no systemd user instance is checked here, for real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fleet import ROOT, Fleet, git
from tests.lab.netlab import Host, Lab
from tests.lab.sshhost import SshHost, listing, remove_stale_users

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

TOKEN_RE = re.compile(rb"flota1\.[0-9a-f]{8}\.[A-Za-z0-9_-]{16,64}\.[0-9a-f]{64}")


# The lab's hosts reach no package index: the wheelhouse for the box (this machine's own
# Python, as the probe sees it) is built into the tests' cache from here first, by the same
# code `add` runs; `add` in the lab then finds it cached. (tests/cli/test_wheelhouse.py
# builds one from nothing.)
WARM = """
import subprocess
from cli.install import preflight, wheelhouse
probe = subprocess.run(["sh", "-s"], input=preflight.probe_script("/usr/bin/python3"), capture_output=True, text=True)
facts = preflight.parse(probe.stdout)
print(wheelhouse.build(facts, facts.python, (), False).size)
"""


@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    remove_stale_users()
    cache = tmp_path_factory.mktemp("wheel-cache")
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", WARM], env=env, check=True, capture_output=True, timeout=600)
    return cache


@dataclass
class Site:
    lab: Lab
    ws: Host
    box: SshHost
    fleet: Fleet
    dev_home: Path  # the CLI user's HOME (its ~/.ssh)
    cache: Path
    remote: Path  # the bare repository the git daemon serves
    url: str

    def flota(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(self.dev_home), "XDG_CACHE_HOME": str(self.cache)}
        return self.fleet.flota(*args, timeout=timeout, env=env)

    def add(self, *args: str, known: bool = True) -> subprocess.CompletedProcess[str]:
        extra = ["--identity", str(self.box.key), "--service", "none"]
        return self.flota("node", "add", self.box.target, *extra, *args)

    def trust(self) -> None:
        ssh = self.dev_home / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "known_hosts").write_text(self.box.known_hosts_line())

    def files(self) -> list[str]:
        return listing(self.box.home)


@pytest.fixture
def site(lab: Lab, tmp_path: Path, wheel_cache: Path) -> Iterator[Site]:
    lan = lab.add_network("lan")
    ws, box_host = lab.add_host("ws", [lan]), lab.add_host("box", [lan])
    lab.add_host("empty", [lan])  # nothing listens there
    box = SshHost(box_host, tmp_path / "ssh")
    fleet = Fleet(ws.dir / "home", cli_prefix=ws.command([]))
    served = tmp_path / "served"
    served.mkdir()
    git("init", "-q", "--bare", str(served / "remote.git"))
    daemon = ws.popen(
        ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack", f"--base-path={served}",
         f"--listen={ws.address()}", "--port=9418", str(served)],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    dev_home = tmp_path / "dev"
    dev_home.mkdir()
    try:
        fleet.start_coordinator(
            "--advertise", ws.address(), listen="0.0.0.0:0", prefix=ws.command([]), mdns=True
        )
        yield Site(lab, ws, box, fleet, dev_home, wheel_cache, served / "remote.git",
                   f"git://{ws.address()}/remote.git")  # fmt: skip
    finally:
        fleet.close()
        daemon.terminate()
        box.close()


class TokenWatch:
    """Scans the command line and environment of every process on the lab's hosts (their
    network namespaces) for a join token, while `add` runs."""

    def __init__(self, *hosts: Host) -> None:
        self.found: list[str] = []
        self.saw_join = False
        self._nets = {(st.st_dev, st.st_ino) for st in (os.stat(f"/run/netns/{h.ns}") for h in hosts)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)

    def _scan(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    st = os.stat(f"/proc/{pid}/ns/net")
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in self._nets:
                    continue
                for part in ("cmdline", "environ"):
                    try:
                        data = Path(f"/proc/{pid}/{part}").read_bytes()
                    except OSError:
                        continue
                    if TOKEN_RE.search(data):
                        self.found.append(f"{pid} {part}: {data[:200]!r}")
                    if part == "cmdline" and b"node_agent\0join" in data:
                        self.saw_join = True
            time.sleep(0.005)

    def __enter__(self) -> TokenWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _files_with_token(root: Path) -> list[str]:
    hits = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink() and TOKEN_RE.search(path.read_bytes()):
                hits.append(str(path))
    return hits


def _no_processes(site: Site, timeout: float = 10) -> None:
    """The user runs nothing any more (sshd's session processes take a moment to go)."""
    deadline = time.monotonic() + timeout
    while site.box.processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert site.box.processes() == {}


def _node(site: Site, name: str) -> dict[str, Any] | None:
    return site.fleet.nodes().get(name)


def _job(site: Site, work: Path) -> dict[str, Any]:
    run = site.fleet.json("run", "--repo", str(work), "--on", "box", "echo from-box > made.txt; echo ok")
    job_id = run["jobs"][0]["id"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job: dict[str, Any] = site.fleet.json("status", job_id)
        if job["status"] not in ("queued", "dispatching", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end")


def test_add_runs_a_job_is_idempotent_and_uninstall_leaves_the_host_as_before(
    site: Site, tmp_path: Path
) -> None:
    site.trust()
    before = site.files()
    with TokenWatch(site.box.host, site.ws) as watch:
        added = site.add("--name", "box", "--network", "home", "--slots", "2", "--label", "lab=yes")
    assert added.returncode == 0, added.stderr
    assert watch.saw_join, "the scan never saw the join run: it proves nothing"
    assert watch.found == [], watch.found
    assert _files_with_token(site.box.home) == []
    assert re.search(r"^node box \(\w+\) is online: flota 0\.1\.0 on \S+, service none; wheelhouse \d+\.\d MB$",
                     added.stdout.strip()), added.stdout  # fmt: skip
    assert "wheelhouse: " in added.stderr

    node = _node(site, "box")
    assert node is not None and node["state"] == "online", node
    assert node["info"]["network"] == "home" and node["info"]["slots"] == 2
    assert node["info"]["labels"] == {"lab": "yes"}
    root = site.box.home / ".local/share/flota"
    assert os.readlink(root / "current") == "versions/0.1.0"
    venv_python = str(root / "current/bin/python")
    no_llm = subprocess.run([venv_python, "-c", "import litellm"], capture_output=True)
    assert no_llm.returncode != 0, "the node's venv must not have litellm without --with llm"
    manifest = json.loads((root / "install.json").read_text())
    assert manifest["complete"] and manifest["service"]["kind"] == "none"
    assert manifest["node"]["id"] == node["info"]["id"]

    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work))
    (work / "README").write_text("hi\n")
    git("add", "-A", cwd=work)
    git("commit", "-qm", "base", cwd=work)
    git("remote", "add", "origin", site.url, cwd=work)  # the coordinator pushes the base there
    job = _job(site, work)
    assert job["status"] == "success", job
    assert git("show", f"{job['branch']}:made.txt", cwd=site.remote) == "from-box\n"

    again = site.add("--name", "box")
    assert again.returncode == 0, again.stderr
    assert "already installed" in again.stdout and "nothing changed" in again.stdout
    assert json.loads((root / "install.json").read_text()) == manifest

    gone = site.flota("node", "uninstall", "box")
    assert gone.returncode == 0, gone.stderr
    assert "uninstalled node box" in gone.stdout and "removed from the fleet" in gone.stdout
    assert site.files() == before
    _no_processes(site)
    assert _node(site, "box") is None
