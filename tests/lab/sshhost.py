"""A lab host that is a machine to install a node on: a real OpenSSH server in its own
network namespace, with its own config and host key, and a throwaway Unix user whose home
is a fresh directory (the lab's hosts share this machine's filesystem; that home is "the
host's files"). Used by tests/lab/test_node_install.py.

The user is made with useradd and deleted at close; its comment names the pid of the test
process that made it, so `remove_stale_users` can delete what a crashed run left.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.lab.netlab import Host, LineTail
from tests.lab.systemdhost import Systemd

__all__ = ["SshHost", "keygen", "listing", "remove_stale_users"]

_USER_RE = re.compile(r"^flssh[0-9a-f]{6}$")
_COMMENT = "flota lab pid="


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]


def remove_stale_users() -> None:
    for entry in pwd.getpwall():
        if not _USER_RE.match(entry.pw_name) or not entry.pw_gecos.startswith(_COMMENT):
            continue
        pid = entry.pw_gecos.removeprefix(_COMMENT)
        if pid.isdigit() and Path(f"/proc/{pid}").exists():
            continue
        subprocess.run(["userdel", "-f", entry.pw_name], capture_output=True)
        if entry.pw_dir.startswith(tempfile.gettempdir() + "/flota-lab-home-"):
            shutil.rmtree(entry.pw_dir, ignore_errors=True)


def listing(root: Path) -> list[str]:
    """Every path under `root` with its type and mode: the host's files, to compare."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            out.append(f"{path.relative_to(root)} {oct(st.st_mode)}")
    return sorted(out)


class SshHost:
    """`host` runs sshd as root; `user` (with `home`) logs in with `key`.

    With `systemd`, the host boots a real systemd first (tests/lab/systemdhost.py: the
    user may `sudo -n`, and has a systemd user instance through PAM and logind), and sshd
    runs inside it."""

    def __init__(self, host: Host, workdir: Path, systemd: bool = False) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not os.access(sshd, os.X_OK):
            raise RuntimeError("the install lab test needs sshd (openssh-server; scripts/test installs it)")
        self.host, self.dir, self.sshd = host, workdir, sshd
        workdir.mkdir(parents=True, exist_ok=True)
        self.user = "flssh" + secrets.token_hex(3)
        self.home = Path(tempfile.mkdtemp(prefix="flota-lab-home-"))
        comment = f"{_COMMENT}{os.getpid()}"
        useradd = [
            "useradd",
            "-M",
            "-d",
            str(self.home),
            "-s",
            "/bin/sh",
            "-p",
            "*",
            "-c",
            comment,
            self.user,
        ]
        subprocess.run(useradd, check=True, capture_output=True)
        info = pwd.getpwnam(self.user)
        os.chown(self.home, info.pw_uid, info.pw_gid)
        self.uid = info.pw_uid
        self.key = workdir / "user_key"
        self.other_key = workdir / "other_key"
        # sshd reads authorized_keys as the user: a directory it can reach, outside its home.
        self.keys_dir = Path(tempfile.mkdtemp(prefix="flota-lab-keys-"))
        self.keys_dir.chmod(0o755)
        self.authorized = self.keys_dir / "authorized_keys"
        self.authorized.write_text(keygen(self.key) + "\n")
        self.authorized.chmod(0o644)
        keygen(self.other_key)
        self.host_key = workdir / "host_key"
        keygen(self.host_key)
        self.proc: subprocess.Popen[str] | None = None
        self.systemd: Systemd | None = None
        if systemd:
            binds = [self.home, self.keys_dir, workdir]
            self.systemd = Systemd(host, workdir / "systemd", binds, sudo_user=self.user)
        self.start()

    @property
    def address(self) -> str:
        return self.host.address()

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}"

    def known_hosts_line(self) -> str:
        return f"{self.address} {Path(f'{self.host_key}.pub').read_text().strip()}\n"

    def fingerprint(self) -> str:
        return fingerprint(Path(f"{self.host_key}.pub"))

    def start(self) -> None:
        d = self.dir
        (d / "sshd_config").write_text(
            f"ListenAddress {self.address}\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.authorized}\nPidFile {d / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n"
            # PAM (pam_systemd) gives a session its systemd user instance.
            f"UsePAM {'yes' if self.systemd else 'no'}\n"
            "Subsystem sftp internal-sftp\n"
            f"AllowUsers {self.user}\n"
        )
        argv = [self.sshd, "-D", "-e", "-f", str(d / "sshd_config")]
        if self.systemd is not None:
            self.systemd.run(["mkdir", "-p", "/run/sshd"])
            self.proc = self.systemd.popen(argv, stderr=subprocess.PIPE, text=True)
        else:
            Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
            self.proc = self.host.popen(argv, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        LineTail(self.proc.stderr).wait_for("Server listening", timeout=15)

    def restart_with_new_key(self) -> None:
        self.stop()
        for suffix in ("", ".pub"):
            Path(f"{self.host_key}{suffix}").unlink()
        keygen(self.host_key)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)

    def processes(self) -> dict[int, str]:
        """The user's processes and their command lines (none left after an uninstall)."""
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if os.stat(f"/proc/{entry}").st_uid == self.uid and stat[stat.rfind(")") + 2] != "Z":
                        cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                        found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    pass
        return found

    def close(self) -> None:
        self.stop()
        if self.systemd is not None:
            self.systemd.close()
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["userdel", "-f", self.user], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(self.keys_dir, ignore_errors=True)
