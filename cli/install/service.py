"""How a node installed by `flota node add` runs: unit files, plists and the commands that
start and stop it. Pure: text and command lines only, for `add` and `uninstall` to run.

Kinds (`--service`):
- `systemd`: a systemd user unit, plus `loginctl enable-linger` so it runs without a login
  and survives logout and reboot (add records whether it enabled linger; uninstall undoes
  only that).
- `system`: a system unit with `User=` (Linux) or a LaunchDaemon with `UserName` (macOS),
  written and loaded with `sudo -n`.
- `launchd`: a LaunchAgent (macOS). It starts at the user's *login* only: a Mac that
  reboots runs no node until someone logs in (`--service system` for a LaunchDaemon).
- `none`: started detached with a pidfile; nothing restarts it.

Every kind stops only the daemon (systemd `KillMode=process`): the daemon stops its jobs
on SIGTERM itself, and its keeper (the jobs' parent) outlives a restart.
"""

from __future__ import annotations

import plistlib
import re
import shlex
from dataclasses import dataclass

__all__ = [
    "LABEL",
    "START_DETACHED",
    "STOP_PROCESSES",
    "UNIT",
    "Layout",
    "launchd_plist",
    "service_file",
    "start_commands",
    "restart_stop",
    "resume_commands",
    "stop_commands",
    "systemd_unit",
]

UNIT = "flota-node.service"
LABEL = "dev.flota.node"
_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+\Z")


@dataclass(frozen=True)
class Layout:
    """Where an install lives on the host."""

    home: str
    user: str
    uid: str
    root: str  # ~/.local/share/flota

    @property
    def python(self) -> str:
        return f"{self.root}/current/bin/python"

    @property
    def state(self) -> str:
        return f"{self.root}/node"

    @property
    def log(self) -> str:
        return f"{self.root}/node.log"

    @property
    def pidfile(self) -> str:
        return f"{self.root}/node.pid"

    @property
    def manifest(self) -> str:
        return f"{self.root}/install.json"

    def version_dir(self, version: str) -> str:
        return f"{self.root}/versions/{version}"

    def daemon_argv(self) -> list[str]:
        return [self.python, "-m", "node_agent", "start", "--state-dir", self.state]


def _unit_arg(arg: str) -> str:
    """One ExecStart word as systemd reads it (quotes, and % and $ doubled)."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.match(arg):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(layout: Layout, system: bool) -> str:
    """The unit: a user unit, or (`system`) a system unit running as the user."""
    exec_start = " ".join(_unit_arg(a) for a in layout.daemon_argv())
    lines = ["[Unit]", "Description=flota node daemon"]
    if system:
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += ["", "[Service]", "Type=simple"]
    if system:
        # WorkingDirectory= takes the path as it is (no quotes), specifiers aside.
        lines += [f"User={layout.user}", f"WorkingDirectory={layout.home.replace('%', '%%')}"]
    lines += [
        f"ExecStart={exec_start}",
        "Environment=PYTHONUNBUFFERED=1",
        "Restart=on-failure",
        "RestartSec=5",
        # Exit 2: removed from the fleet, or a bad node.toml: starting again cannot help.
        "RestartPreventExitStatus=2",
        # Only the daemon: it stops its jobs on SIGTERM, and the keeper outlives a restart.
        "KillMode=process",
        "TimeoutStopSec=60",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if system else 'default.target'}",
    ]
    return "\n".join(lines) + "\n"


def launchd_plist(layout: Layout, system: bool) -> bytes:
    """A LaunchAgent, or (`system`) a LaunchDaemon running as the user."""
    data: dict[str, object] = {
        "Label": LABEL if not system else f"{LABEL}.{layout.user}",
        "ProgramArguments": layout.daemon_argv(),
        "WorkingDirectory": layout.home,
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1"},
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "StandardOutPath": layout.log,
        "StandardErrorPath": layout.log,
        "ProcessType": "Background",
        # The keeper (the jobs' parent) is not killed with the daemon.
        "AbandonProcessGroup": True,
    }
    if system:
        data["UserName"] = layout.user
    return plistlib.dumps(data, sort_keys=True)


def service_file(kind: str, layout: Layout) -> str:
    """Where the kind's unit or plist goes ("" for `none`)."""
    if kind == "systemd":
        return f"{layout.home}/.config/systemd/user/{UNIT}"
    if kind == "launchd":
        return f"{layout.home}/Library/LaunchAgents/{LABEL}.plist"
    if kind == "system-systemd":
        return f"/etc/systemd/system/flota-node-{layout.user}.service"
    if kind == "system-launchd":
        return f"/Library/LaunchDaemons/{LABEL}.{layout.user}.plist"
    return ""


def _q(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


def start_commands(kind: str, layout: Layout, path: str) -> list[str]:
    """Shell commands that enable and start the service whose file is at `path`."""
    name = path.rsplit("/", 1)[-1]
    if kind == "systemd":
        return ["systemctl --user daemon-reload", _q("systemctl", "--user", "enable", "--now", name)]
    if kind == "system-systemd":
        return ["sudo -n systemctl daemon-reload", _q("sudo", "-n", "systemctl", "enable", "--now", name)]
    if kind == "launchd":
        return [_q("launchctl", "bootstrap", f"gui/{layout.uid}", path)]
    if kind == "system-launchd":
        return [_q("sudo", "-n", "launchctl", "bootstrap", "system", path)]
    if kind == "none":
        return [
            _q(layout.python, "-c", START_DETACHED, layout.pidfile, layout.log, layout.home)
            + " "
            + _q(*layout.daemon_argv())
        ]
    raise ValueError(kind)


def stop_commands(kind: str, layout: Layout, path: str, python: str) -> list[str]:
    """Stop and disable the service (each may fail harmlessly: it may be stopped already),
    then end what is left of the install's processes (the keeper), with the host's `python`."""
    name = path.rsplit("/", 1)[-1]
    label = name.removesuffix(".plist")
    cmds = {
        "systemd": [_q("systemctl", "--user", "disable", "--now", name)],
        "system-systemd": [_q("sudo", "-n", "systemctl", "disable", "--now", name)],
        "launchd": [_q("launchctl", "bootout", f"gui/{layout.uid}/{label}")],
        "system-launchd": [_q("sudo", "-n", "launchctl", "bootout", f"system/{label}")],
        "none": [],
    }[kind]
    return [*cmds, _q(python, "-c", STOP_PROCESSES, layout.pidfile, layout.root + "/")]


# Run by the installed Python: start the daemon in a session of its own, its output
# appended to the log, and write its pid. argv: PIDFILE LOG CWD COMMAND...
START_DETACHED = """\
import os, subprocess, sys
pidfile, log, cwd = sys.argv[1:4]
with open(log, "ab") as out:
    p = subprocess.Popen(sys.argv[4:], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         cwd=cwd, start_new_session=True)
with open(pidfile + ".tmp", "w") as f:
    f.write(str(p.pid))
os.replace(pidfile + ".tmp", pidfile)
print(p.pid)
"""

# End the daemon of the pidfile (if that pid is still ours), then every process whose
# command line names the install root (the keeper): SIGTERM, a grace, SIGKILL.
# argv: PIDFILE ROOT/
STOP_PROCESSES = """\
import os, signal, subprocess, sys, time
pidfile, marker = sys.argv[1:3]
skip = {os.getpid(), os.getppid()}
def cmdline(pid):
    if os.path.isdir("/proc"):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                return f.read().replace(b"\\0", b" ").decode(errors="replace")
        except OSError:
            return ""
    r = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True)
    return r.stdout
def pids():
    if os.path.isdir("/proc"):
        found = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    else:
        r = subprocess.run(["ps", "-axo", "pid="], capture_output=True, text=True)
        found = [int(w) for w in r.stdout.split()]
    return [p for p in found if p not in skip and marker in cmdline(p)]
def end(targets, grace):
    for p in targets:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(marker in cmdline(p) for p in targets):
        time.sleep(0.1)
    for p in targets:
        if marker in cmdline(p):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
try:
    with open(pidfile) as f:
        daemon = [int(f.read().strip())]
except (OSError, ValueError):
    daemon = []
end([p for p in daemon if marker in cmdline(p)], 30)
deadline = time.time() + 10
while time.time() < deadline and pids():
    time.sleep(0.2)
end(pids(), 5)
"""


# "Restart, keep jobs": send the node daemon SIGUSR1 (it stops serving, says no goodbye and
# leaves its jobs to the keeper) and wait until it has exited. The daemon is the pid in
# the pidfile or in its state's daemon.json, if that pid still runs node_agent.
# argv: PIDFILE DAEMON_JSON; exit 0 once no daemon runs, 1 if it did not end in time.
KEEP_JOBS_STOP = """\
import json, os, signal, subprocess, sys, time
def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        if os.path.isdir("/proc"):
            return ""
    except OSError:
        return ""
    r = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True)
    return r.stdout
pids = set()
readers = ((sys.argv[1], lambda t: int(t.strip())), (sys.argv[2], lambda t: int(json.loads(t)["pid"])))
for path, read in readers:
    try:
        with open(path) as f:
            pids.add(read(f.read()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
daemons = [p for p in pids if p != os.getpid() and "node_agent start" in cmdline(p)]
for p in daemons:
    try:
        os.kill(p, signal.SIGUSR1)
    except OSError:
        pass
deadline = time.time() + 30
while time.time() < deadline and any("node_agent start" in cmdline(p) for p in daemons):
    time.sleep(0.1)
if any("node_agent start" in cmdline(p) for p in daemons):
    print("the node daemon did not stop within 30 s of SIGUSR1", file=sys.stderr)
    sys.exit(1)
print(len(daemons))
"""


def restart_stop(layout: Layout, python: str) -> str:
    """The command that stops the daemon keeping its jobs (run with the host's `python`:
    it works whatever state the installed venvs are in)."""
    return _q(python, "-c", KEEP_JOBS_STOP, layout.pidfile, f"{layout.state}/daemon.json")


def resume_commands(kind: str, layout: Layout, path: str) -> list[str]:
    """Start the service again after `restart_stop` (it exited 0, so nothing restarted it),
    now running whatever `current` points at."""
    name = path.rsplit("/", 1)[-1]
    label = name.removesuffix(".plist")
    if kind == "systemd":
        return [_q("systemctl", "--user", "reset-failed", name) + " 2>/dev/null; true",
                _q("systemctl", "--user", "restart", name)]  # fmt: skip
    if kind == "system-systemd":
        return [_q("sudo", "-n", "systemctl", "reset-failed", name) + " 2>/dev/null; true",
                _q("sudo", "-n", "systemctl", "restart", name)]  # fmt: skip
    if kind == "launchd":
        return [_q("launchctl", "kickstart", "-k", f"gui/{layout.uid}/{label}")]
    if kind == "system-launchd":
        return [_q("sudo", "-n", "launchctl", "kickstart", "-k", f"system/{label}")]
    return start_commands(kind, layout, path)
