"""The coordinator pushes a run's base over ssh as the user's own git would (issue 14,
defects 1 and 2): a real OpenSSH server on a lab host serves a bare repository; the
coordinator's host reaches it with a key and a known_hosts file named only in
GIT_SSH_COMMAND (or in the repository's core.sshCommand), never in ~/.ssh.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fleet import ROOT
from tests.lab.netlab import Host, Lab, LineTail

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

PUSH = """
import json, sys
from coordinator.errors import RepoError
from coordinator.gitbase import push_base
try:
    print(json.dumps({"ok": push_base(sys.argv[1], sys.argv[2], "", False, "r1", 30).base_commit}))
except RepoError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def _git(*args: str, cwd: Path) -> str:
    identity = {"GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.com"}
    identity |= {"GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}
    env = {**os.environ, **identity, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


@dataclass
class Site:
    dev: Host  # where the coordinator runs
    url: str
    src: Path  # the user's repository, on dev
    bare: Path  # served by the git host's sshd
    key: Path  # authorized on the git host
    other_key: Path  # not authorized
    known_hosts: Path  # holds the git host's key
    empty_known_hosts: Path

    def push(self, env: dict[str, str]) -> dict[str, str]:
        base = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.src.parent),
            "PYTHONPATH": str(ROOT),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
        res = self.dev.run([sys.executable, "-c", PUSH, str(self.src), self.url], env=base | env, timeout=60)
        result: dict[str, str] = json.loads(res.stdout)
        return result

    def ssh(self, key: Path, known_hosts: Path) -> str:
        return f"ssh -i {key} -o UserKnownHostsFile={known_hosts} -o GlobalKnownHostsFile=/dev/null"


@pytest.fixture
def site(lab: Lab, tmp_path: Path) -> Site:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(sshd, os.X_OK):
        pytest.fail("the ssh lab test needs sshd (openssh-server; scripts/test installs it)", pytrace=False)
    lan = lab.add_network("lan")
    server, dev = lab.add_host("git", [lan]), lab.add_host("dev", [lan])
    d = tmp_path / "ssh"
    d.mkdir()
    host_key = _keygen(d / "host_key")
    (d / "authorized_keys").write_text(_keygen(d / "user_key") + "\n")
    _keygen(d / "other_key")
    (d / "known_hosts").write_text(f"{server.address()} {host_key}\n")
    (d / "empty_known_hosts").write_text("")
    (d / "sshd_config").write_text(
        f"ListenAddress {server.address()}\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin prohibit-password\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    proc = server.popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    LineTail(proc.stderr).wait_for("Server listening", timeout=15)

    src, bare = tmp_path / "src", tmp_path / "remote.git"
    _git("init", "-q", "-b", "main", str(src), cwd=tmp_path)
    _git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    (src / "a.txt").write_text("one\n")
    _git("add", "-A", cwd=src)
    _git("commit", "-q", "-m", "base", cwd=src)
    return Site(
        dev=dev,
        url=f"ssh://root@{server.address()}{bare}",
        src=src,
        bare=bare,
        key=d / "user_key",
        other_key=d / "other_key",
        known_hosts=d / "known_hosts",
        empty_known_hosts=d / "empty_known_hosts",
    )


def _head(site: Site) -> str:
    return _git("rev-parse", "HEAD", cwd=site.src).strip()


def test_key_and_known_hosts_from_git_ssh_command(site: Site) -> None:
    result = site.push({"GIT_SSH_COMMAND": site.ssh(site.key, site.known_hosts)})
    assert result == {"ok": _head(site)}
    assert _git("rev-parse", "refs/flota/base/r1", cwd=site.bare).strip() == _head(site)


def test_key_and_known_hosts_from_core_ssh_command(site: Site) -> None:
    _git("config", "core.sshCommand", site.ssh(site.key, site.known_hosts), cwd=site.src)
    assert site.push({}) == {"ok": _head(site)}
    assert _git("rev-parse", "refs/flota/base/r1", cwd=site.bare).strip() == _head(site)


def test_an_unknown_host_key_is_named(site: Site) -> None:
    result = site.push({"GIT_SSH_COMMAND": site.ssh(site.key, site.empty_known_hosts)})
    error = result["error"]
    assert error.startswith(f"cannot push the base to {site.url}: ")
    assert "Host key verification failed (fatal: Could not read from remote repository.)" in error
    assert "\n" not in error


def test_a_key_the_server_refuses_is_named(site: Site) -> None:
    result = site.push({"GIT_SSH_COMMAND": site.ssh(site.other_key, site.known_hosts)})
    assert "Permission denied (publickey)" in result["error"]
    assert "fatal: Could not read from remote repository." in result["error"]
