"""A lab host whose PID 1 is a real systemd: `flota node add --service systemd|system` needs
one, and this machine's own PID 1 is not systemd.

systemd boots in a PID, mount, IPC and cgroup namespace of its own, inside the lab host's
network namespace. Its root is an overlay of this machine's `/` whose writes go to a
tmpfs (so the boot's tmpfiles, journald and units never write to the real file system);
only the directories passed as `binds` (the lab user's home, sshd's files) are the real
ones, read-write, at the same paths. /tmp is a tmpfs of its own and /tmp's boot-time cleaning
is switched off, so nothing under a bind is ever cleaned. The host's enabled units are
hidden (the overlay's /etc/systemd/system is empty); udev and gettys are masked.

cgroup v2 is needed (the unified hierarchy: /sys/fs/cgroup itself or, on a hybrid host,
/sys/fs/cgroup/unified); the container's hierarchy is a child cgroup of it, removed at close.
Users must exist before the boot (the overlay's /etc/passwd is read then).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.lab.netlab import Host, LabError, wait_until

__all__ = ["Systemd", "cgroup2_root"]

# PID 1 of the new namespaces until it execs systemd. argv: WORKDIR SUDO_USER BIND...
_STAGE = r"""
set -eu
W=$1; SUDO_USER=$2; shift 2
mount --make-rprivate /
mkdir -p "$W/ov" "$W/root"
mount -t tmpfs -o mode=755 tmpfs "$W/ov"
mkdir -p "$W/ov/upper" "$W/ov/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/ov/upper,workdir=$W/ov/work" "$W/root"
R=$W/root
mount -t proc proc "$R/proc"
mount --bind /sys "$R/sys"
mount -o remount,bind,ro "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
for d in null zero full random urandom tty; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
for d in "$@"; do mkdir -p "$R$d"; mount --bind "$d" "$R$d"; done
hostname > "$R/etc/hostname"
rm -rf "$R"/etc/systemd/system/*
ln -s /lib/systemd/system/multi-user.target "$R/etc/systemd/system/default.target"
for u in systemd-udevd.service systemd-udev-trigger.service systemd-udevd-control.socket \
    systemd-udevd-kernel.socket getty.target console-getty.service ssh.service ssh.socket \
    cron.service systemd-tmpfiles-clean.timer; do
  ln -sf /dev/null "$R/etc/systemd/system/$u"
done
# No boot-time cleaning of /tmp (the binds live there).
mkdir -p "$R/etc/tmpfiles.d"
: > "$R/etc/tmpfiles.d/tmp.conf"
: > "$R/etc/tmpfiles.d/x11.conf"
if [ -n "$SUDO_USER" ]; then
  echo "$SUDO_USER ALL=(ALL) NOPASSWD: ALL" > "$R/etc/sudoers.d/flota-lab"
  chmod 440 "$R/etc/sudoers.d/flota-lab"
fi
cd "$R"
mkdir -p .oldroot
pivot_root . .oldroot
export container=flota-lab
exec chroot . /bin/sh -c \
  'umount -l /.oldroot && rmdir /.oldroot; exec /lib/systemd/systemd --log-target=journal'
"""


def cgroup2_root() -> Path | None:
    """Where this machine's cgroup v2 hierarchy is mounted (None: not at all)."""
    for path in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (path / "cgroup.subtree_control").exists() and (path / "cgroup.procs").exists():
            return path
    return None


class Systemd:
    """systemd as PID 1 of its own namespaces on `host` (see the module's note)."""

    def __init__(
        self, host: Host, workdir: Path, binds: Sequence[Path] = (), sudo_user: str = "", timeout: float = 60
    ) -> None:
        root = cgroup2_root()
        if root is None:
            raise LabError("the systemd lab host needs cgroup v2 (/sys/fs/cgroup or /sys/fs/cgroup/unified)")
        self.host = host
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.cgroup = root / f"flota-lab-{os.getpid()}-{secrets.token_hex(3)}"
        self.cgroup.mkdir()
        namespaces = ["unshare", "--pid", "--fork", "--mount", "--ipc", "--cgroup", "--"]
        argv = [*namespaces, "sh", "-c", _STAGE, "stage", str(workdir), sudo_user, *(str(b) for b in binds)]
        # Into the container's cgroup first, so the cgroup namespace is rooted there.
        mover = ["sh", "-c", 'echo $$ > "$0"; exec "$@"', str(self.cgroup / "cgroup.procs")]
        self.log = open(workdir / "boot.log", "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            mover + host.command(argv), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        host.lab._track(self.proc)
        self.pid = 0
        try:
            self._wait_booted(timeout)
        except BaseException:
            self.close()
            raise

    def _init_pid(self) -> int:
        """systemd's pid as this machine sees it: unshare's only child."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return 0
        if not children:
            return 0
        pid = int(children[0])
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return 0
        return pid if comm == "systemd" else 0

    def _wait_booted(self, timeout: float) -> None:
        def booted() -> bool:
            if self.proc.poll() is not None:
                raise LabError(f"systemd did not boot: {(self.dir / 'boot.log').read_text()[-2000:]}")
            self.pid = self.pid or self._init_pid()
            if not self.pid:
                return False
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            return state in ("running", "degraded")

        wait_until(booted, timeout, interval=0.2, what="systemd to boot")

    def command(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside the container (all its namespaces, its root)."""
        return ["nsenter", "-t", str(self.pid), "-a", "--", *(os.fspath(a) for a in argv)]

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[str] = subprocess.Popen(self.command(argv), **kwargs)  # type: ignore[call-overload]
        self.host.lab._track(proc)
        return proc

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv), capture_output=True, text=True, check=check, timeout=timeout
        )

    def close(self) -> None:
        """Kill PID 1 (the kernel ends every process of its PID namespace), remove the cgroups."""
        if self.proc.poll() is None:
            pid = self.pid or self._init_pid()
            with contextlib.suppress(OSError):
                os.kill(pid or self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        deadline = time.monotonic() + 10
        while self.cgroup.exists() and time.monotonic() < deadline:
            for d in sorted((p for p in self.cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()
            if self.cgroup.exists():
                time.sleep(0.1)
