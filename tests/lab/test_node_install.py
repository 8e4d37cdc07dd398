"""`flota node add` / `uninstall` against a real OpenSSH server on a lab host (issue 15).

The workstation host "ws" runs the coordinator, the CLI and a git daemon serving the
bare remote (git://, so the node's user and root both reach it); the host "box" runs sshd
and has a throwaway user whose home is the host's file system as far as the install goes.
The CLI's own HOME (its ~/.ssh) is a temporary directory; its wheel cache is shared by the
tests of a session (so only the first builds the wheelhouse).

Here the node runs with `--service none`; tests/lab/test_node_service.py boots a real
systemd on the box for `--service system` and `systemd`. The unit files are checked in
tests/cli/test_install_units.py, and the preflight's refusal when there is no systemd user
instance is checked here, for real.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli import __version__
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
script = preflight.probe_script("/usr/bin/python3")
probe = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True)
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
    service: str = "none"  # add's --service

    def flota(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(self.dev_home), "XDG_CACHE_HOME": str(self.cache)}
        return self.fleet.flota(*args, timeout=timeout, env=env)

    def add(self, *args: str, known: bool = True) -> subprocess.CompletedProcess[str]:
        extra = ["--identity", str(self.box.key), "--service", self.service]
        return self.flota("node", "add", self.box.target, *extra, *args)

    def trust(self) -> None:
        ssh = self.dev_home / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "known_hosts").write_text(self.box.known_hosts_line())

    def files(self) -> list[str]:
        return listing(self.box.home)


@contextlib.contextmanager
def make_site(lab: Lab, tmp_path: Path, wheel_cache: Path, systemd: bool = False) -> Iterator[Site]:
    """The lab of the module's note; with `systemd`, the box boots a real systemd
    (tests/lab/systemdhost.py) and `add` installs the service kind asked for."""
    lan = lab.add_network("lan")
    ws, box_host = lab.add_host("ws", [lan]), lab.add_host("box", [lan])
    lab.add_host("empty", [lan])  # nothing listens there
    box = SshHost(box_host, tmp_path / "ssh", systemd=systemd)
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


@pytest.fixture
def site(lab: Lab, tmp_path: Path, wheel_cache: Path) -> Iterator[Site]:
    with make_site(lab, tmp_path, wheel_cache) as made:
        yield made


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
    version = re.escape(__version__)
    summary = rf"^node box \(\w+\) is online: flota {version} on \S+, service none; wheelhouse \d+\.\d MB$"
    assert re.search(summary, added.stdout.strip()), added.stdout
    assert "wheelhouse: " in added.stderr

    node = _node(site, "box")
    assert node is not None and node["state"] == "online", node
    assert node["info"]["network"] == "home" and node["info"]["slots"] == 2
    assert node["info"]["labels"] == {"lab": "yes"}
    assert node["info"]["version"] == __version__  # `flota nodes` shows it
    root = site.box.home / ".local/share/flota"
    assert os.readlink(root / "current") == f"versions/{__version__}"
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

    # A daemon that died is started again by the next add; the rest is as it was.
    os.kill(int((root / "node.pid").read_text()), signal.SIGKILL)
    revived = site.flota("--json", "node", "add", site.box.target, "--identity", str(site.box.key),
                         "--service", "none", "--name", "box")  # fmt: skip
    assert revived.returncode == 0, revived.stderr
    summary = json.loads(revived.stdout)
    assert summary["state"] == "already installed" and summary["id"] == manifest["node"]["id"]
    assert summary["changes"] == ["start the node daemon again (it was not running)"]
    assert _node(site, "box")["state"] == "online"  # type: ignore[index]

    gone = site.flota("node", "uninstall", "box")
    assert gone.returncode == 0, gone.stderr
    assert "uninstalled node box" in gone.stdout and "removed from the fleet" in gone.stdout
    assert site.files() == before
    _no_processes(site)
    assert _node(site, "box") is None


def _flota_on_a_terminal(site: Site, args: list[str], answer: str) -> tuple[int, str, str]:
    """Run the CLI with a terminal on stdin and stderr; answer its question; (rc, out, terminal)."""
    leader, follower = pty.openpty()
    env = {**site.fleet.env, "HOME": str(site.dev_home), "XDG_CACHE_HOME": str(site.cache)}
    proc = subprocess.Popen(
        [*site.fleet.cli_prefix, site.fleet.python, "-m", "cli", *args],
        stdin=follower, stdout=subprocess.PIPE, stderr=follower, env=env, cwd=site.fleet.home,
    )  # fmt: skip
    os.close(follower)
    seen, asked = b"", 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the process ended
                break
            seen += chunk
            if seen.count(b"[y/N]") > asked:
                asked += 1
                os.write(leader, answer.encode() + b"\n")
        elif proc.poll() is not None:
            break
    out = proc.stdout.read().decode() if proc.stdout else ""
    rc = proc.wait(30)
    os.close(leader)
    return rc, out, seen.decode(errors="replace")


def test_an_unknown_key_asked_on_a_terminal_then_keep_state_keeps_only_the_state_dir(site: Site) -> None:
    before = site.files()
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
    rc, out, terminal = _flota_on_a_terminal(site, args, "y")
    assert rc == 0, terminal
    assert terminal.count("[y/N]") == 1, terminal
    assert (
        f"The host key of {site.box.address} is not known: ssh-ed25519 {site.box.fingerprint()}" in terminal
    )
    known = (site.dev_home / ".ssh" / "known_hosts").read_text()
    assert known == site.box.known_hosts_line(), "the accepted key is remembered, as ssh does"
    assert _node(site, "box") is not None
    state = site.box.home / ".local/share/flota/node"
    key = (state / "identity" / "node.key").read_bytes()

    gone = site.flota("node", "uninstall", "box", "--keep-state")
    assert gone.returncode == 0, gone.stderr
    added = sorted(set(site.files()) - set(before))
    kept = [".local", ".local/share", ".local/share/flota"]
    assert [p.split()[0] for p in added][:3] == kept, added
    assert all(p.split()[0].startswith(".local/share/flota/node") for p in added[3:]), added
    assert set(before) <= set(site.files())
    assert (state / "identity" / "node.key").read_bytes() == key
    assert _node(site, "box") is None
    _no_processes(site)

    # The kept state is used again by the next add (the same node id, a new certificate).
    again = site.add("--name", "box")
    assert again.returncode == 0, again.stderr
    node = _node(site, "box")
    assert node is not None and node["info"]["id"] == (state / "identity" / "id").read_text().strip()
    assert site.flota("node", "uninstall", "box").returncode == 0
    # That add found ~/.local/share in place (the kept state's parents), so those stay.
    assert site.files() == sorted(before + added[:2])


def test_a_dry_run_prints_every_change_and_makes_none(site: Site) -> None:
    before = site.files()
    fp = site.box.fingerprint()
    dry = site.add("--name", "box", "--fingerprint", fp, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].startswith(
        f"would install flota {__version__} on {site.box.target} as node box; wheelhouse "
    )
    root = f"{site.box.home}/.local/share/flota"
    for change in (
        f"create {root}",
        "over SFTP",
        "create a venv",
        "--no-index",
        f"point {root}/current",
        "join the fleet as box",
        "node.toml",
        "start the node daemon detached",
        "install.json",
    ):
        assert any(change in line for line in lines[1:]), (change, lines)  # fmt: skip
    assert site.files() == before
    assert not (site.dev_home / ".ssh" / "known_hosts").exists()
    assert site.fleet.nodes() == {}

    # ~/.ssh/config names the host, user and key; the host key is pinned by fingerprint.
    (site.dev_home / ".ssh").mkdir(mode=0o700)
    (site.dev_home / ".ssh" / "config").write_text(
        f"Host box\n  HostName {site.box.address}\n  User {site.box.user}\n  IdentityFile {site.box.key}\n"
    )
    aliased = site.flota("node", "add", "box", "--fingerprint", fp, "--service", "none", "--dry-run")
    assert aliased.returncode == 0, aliased.stderr
    assert aliased.stdout.startswith(f"would install flota {__version__} on {site.box.target} as node box; ")

    nothing = site.flota("node", "uninstall", "box", "--fingerprint", fp)
    assert nothing.returncode == 2
    assert nothing.stderr == "flota: no node named box was installed from this machine " + (
        f"({site.fleet.home}/installs): pass its USER@HOST instead\n"
    )
    nothing = site.flota(
        "node", "uninstall", site.box.target, "--identity", str(site.box.key), "--fingerprint", fp
    )
    assert nothing.returncode == 2
    assert nothing.stderr == (
        f"flota: {site.box.target} has no flota installed by flota node add (no install.json): "
        "nothing to do\n"
    )
    assert site.files() == before


@pytest.mark.parametrize(
    "case",
    ["unknown-key", "changed-key", "wrong-user", "wrong-key", "unreachable", "no-python", "name-taken",
     "no-systemd-user"],
)  # fmt: skip
def test_refusals_name_the_fix_and_change_nothing(site: Site, case: str) -> None:
    box = site.box
    site.trust()
    target, extra = box.target, ["--identity", str(box.key), "--service", "none"]
    if case == "unknown-key":
        (site.dev_home / ".ssh" / "known_hosts").write_text("")
        fp = box.fingerprint()
        want = (
            f"the host key of {box.address} is not known (ssh-ed25519 {fp}): check it on the host "
            f"(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then pass --fingerprint {fp}"
        )
    elif case == "changed-key":
        old = box.fingerprint()
        box.restart_with_new_key()
        want = (
            f"the host key of {box.address} has CHANGED: {site.dev_home}/.ssh/known_hosts has {old}, "
            f"the host shows {box.fingerprint()}; refusing."
        )
    elif case in ("wrong-user", "wrong-key"):
        if case == "wrong-user":
            target = f"nobody@{box.address}"
        else:
            extra = ["--identity", str(box.other_key), "--service", "none"]
        want = f"{target} refused our keys: pass --identity KEY"
    elif case == "unreachable":
        target = f"{box.user}@{site.lab.hosts['empty'].address()}"
        want = f"cannot reach {site.lab.hosts['empty'].address()}:22 over ssh (connection refused)"
        (site.dev_home / ".ssh" / "known_hosts").write_text("")
    elif case == "no-python":
        extra += ["--python", "/nonexistent"]
        want = f"--python /nonexistent: no such program on {box.target}"
    elif case == "name-taken":
        site.fleet.start_node(
            "taken", listen="0.0.0.0:0", prefix=site.ws.command([]), state=site.ws.dir / "taken"
        )
        extra += ["--name", "taken"]
        want = "a node named taken is already in the fleet (id "
    else:
        extra = ["--identity", str(box.key)]  # the default service: systemd (user)
        want = f"{box.user} on {box.target} has no systemd user instance ("
    fleet_before = site.fleet.nodes().keys()
    before = site.files()
    res = site.flota("node", "add", target, *extra)
    assert res.returncode in (2, 3), res
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"flota: {want}"), last
    assert "Traceback" not in res.stderr
    assert site.files() == before
    assert site.fleet.nodes().keys() == fleet_before
    _no_processes(site)


def test_a_failed_add_undoes_every_step(site: Site) -> None:
    """A node the coordinator cannot dial (it listens on its loopback only) never comes
    online: add fails at its last step and undoes everything: the daemon stopped, the files
    gone, the node out of the fleet."""
    site.trust()
    before = site.files()
    res = site.add("--name", "box", "--listen", "127.0.0.1:7390", "--wait", "3")
    assert res.returncode == 2, res
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("flota: the node did not come online within 3 s (its log ends: "), last
    assert last.endswith(f"(undone: {site.box.target} is as it was)"), last
    assert "flota: undoing what was done" in res.stderr
    assert site.files() == before
    assert site.fleet.nodes() == {}
    _no_processes(site)
