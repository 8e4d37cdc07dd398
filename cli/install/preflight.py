"""Preflight for `flota node add`: what the host is (facts in), what stands in the way (problems out).

Pure: `PROBE` is the one shell script `add` runs on the host (POSIX sh, read-only: it
changes nothing there); `parse` turns its output into `Facts`; `problems` says, one line
each and naming the fix, why the install cannot go ahead. Nothing here does I/O.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from protos.limits import NAME_RE

__all__ = [
    "MIN_PYTHON",
    "PROBE",
    "SERVICES",
    "Facts",
    "Python",
    "Wish",
    "install_root",
    "parse",
    "problems",
    "probe_script",
    "service_kind",
]

MIN_PYTHON = (3, 11)
SERVICES = ("systemd", "launchd", "system", "none")
ROOT_REL = ".local/share/flota"  # under the user's home: versions/, current, node/, install.json
MANIFEST = "install.json"
STATE = "node"  # the node's state dir (its key), kept by `uninstall --keep-state`

_PY_INFO = (
    "import sys,json,platform;import importlib.util as u;"
    "print(json.dumps({'version':list(sys.version_info[:3]),'impl':sys.implementation.name,"
    "'libc':list(platform.libc_ver()),'mac':platform.mac_ver()[0],'machine':platform.machine(),"
    "'venv':u.find_spec('venv') is not None}))"
)

PROBE = r"""
root="$HOME/__ROOT__"
echo "os=$(uname -s)"
echo "arch=$(uname -m)"
echo "home=$HOME"
echo "user=$(id -un)"
echo "uid=$(id -u)"
echo "hostname=$(uname -n)"
if [ -n "$FLOTA_PYTHON" ]; then set -- "$FLOTA_PYTHON"
else set -- python3 python3.14 python3.13 python3.12 python3.11; fi
for p in "$@"; do
  path=$(command -v "$p" 2>/dev/null) || { echo "python_missing=$p"; continue; }
  if info=$("$path" -c "__PY_INFO__" 2>/dev/null); then echo "python=$path $info"
  else echo "python_broken=$path"; fi
done
echo "git=$(git --version 2>/dev/null)"
echo "disk_kb=$(df -Pk "$HOME" 2>/dev/null | awk 'NR==2 {print $4}')"
if [ -e "$root" ]; then echo "root_entries=$(ls -A "$root" | tr '\n' ' ')"; fi
if [ -f "$root/__MANIFEST__" ]; then echo "manifest=$(cat "$root/__MANIFEST__")"; fi
pid=$(cat "$root/node.pid" 2>/dev/null)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  if [ -r "/proc/$pid/cmdline" ]; then  # a zombie, or a pid used again, is no daemon
    if tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q node_agent; then echo "daemon=running"; fi
  else echo "daemon=running"; fi
fi
if command -v systemctl >/dev/null 2>&1; then
  if err=$(systemctl --user show-environment 2>&1 >/dev/null); then echo "systemd_user=yes"
  else echo "systemd_user=no $(echo "$err" | head -n 1)"; fi
fi
if [ -d /run/systemd/system ]; then echo "systemd_system=yes"; fi
if command -v loginctl >/dev/null 2>&1; then
  echo "linger=$(loginctl show-user "$(id -un)" -p Linger --value 2>/dev/null)"
fi
if command -v sudo >/dev/null 2>&1; then
  if sudo -n true 2>/dev/null; then echo "sudo=yes"; else echo "sudo=no $(sudo -n true 2>&1 | head -n 1)"; fi
fi
if command -v launchctl >/dev/null 2>&1; then echo "launchd=yes"; fi
"""


def probe_script(python: str | None) -> str:
    """The probe, with the Python to look at (`--python PATH`) or the usual names."""
    script = PROBE.replace("__ROOT__", ROOT_REL).replace("__MANIFEST__", MANIFEST)
    script = script.replace("__PY_INFO__", _PY_INFO)
    head = f"FLOTA_PYTHON={shlex.quote(python)}\n" if python is not None else "FLOTA_PYTHON=\n"
    return head + script


def install_root(home: str) -> str:
    return f"{home.rstrip('/')}/{ROOT_REL}"


@dataclass(frozen=True)
class Python:
    path: str
    version: tuple[int, ...]
    impl: str = "cpython"
    libc: tuple[str, str] = ("", "")
    mac: str = ""
    machine: str = ""
    venv: bool = True

    @property
    def short(self) -> str:
        return ".".join(map(str, self.version[:2]))


@dataclass(frozen=True)
class Facts:
    os: str = ""
    arch: str = ""
    home: str = ""
    user: str = ""
    uid: str = ""
    hostname: str = ""
    pythons: tuple[Python, ...] = ()
    missing: tuple[str, ...] = ()  # python names/paths not found
    broken: tuple[str, ...] = ()  # found but would not run
    git: str = ""
    disk_kb: int | None = None
    root_entries: tuple[str, ...] | None = None  # None: no install root
    manifest: dict[str, Any] | None = None
    daemon_running: bool = False
    systemctl: bool = False
    systemd_user: bool = False
    systemd_user_error: str = ""
    systemd_system: bool = False
    linger: str | None = None  # "yes" / "no"; None: no loginctl
    sudo: bool = False
    sudo_error: str = "sudo is not installed"
    launchd: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def python(self) -> Python | None:
        """The Python the node will run on: the first one found that is new enough."""
        return next((p for p in self.pythons if p.version[:2] >= MIN_PYTHON and p.impl == "cpython"), None)

    @property
    def root(self) -> str:
        return install_root(self.home)


def _python(value: str) -> Python | None:
    path, _, info = value.partition(" ")
    try:
        data = json.loads(info)
        libc = data.get("libc") or ["", ""]
        return Python(
            path=path,
            version=tuple(int(v) for v in data["version"]),
            impl=str(data.get("impl", "")),
            libc=(str(libc[0]), str(libc[1])),
            mac=str(data.get("mac") or ""),
            machine=str(data.get("machine") or ""),
            venv=bool(data.get("venv", True)),
        )
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def parse(text: str) -> Facts:
    """The probe's `key=value` lines as Facts (unknown keys are kept in `extra`)."""
    values: dict[str, Any] = {"pythons": [], "missing": [], "broken": [], "extra": {}}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "python":
            py = _python(value)
            values["pythons" if py else "broken"].append(py or value.partition(" ")[0])
        elif key in ("python_missing", "python_broken"):
            values["missing" if key == "python_missing" else "broken"].append(value)
        elif key in ("os", "arch", "home", "user", "uid", "hostname", "git"):
            values[key] = value.strip()
        elif key == "disk_kb":
            values["disk_kb"] = int(value) if value.strip().isdigit() else None
        elif key == "root_entries":
            values["root_entries"] = tuple(value.split())
        elif key == "manifest":
            try:
                manifest = json.loads(value)
            except ValueError:
                manifest = {"unreadable": value[:80]}
            values["manifest"] = manifest if isinstance(manifest, dict) else {"unreadable": value[:80]}
        elif key == "daemon":
            values["daemon_running"] = value == "running"
        elif key == "systemd_user":
            values["systemctl"] = True
            values["systemd_user"] = value == "yes"
            values["systemd_user_error"] = value.removeprefix("no").strip()
        elif key == "systemd_system":
            values["systemd_system"] = True
        elif key == "linger":
            values["linger"] = value.strip() or "no"
        elif key == "sudo":
            values["sudo"] = value == "yes"
            values["sudo_error"] = value.removeprefix("no").strip()
        elif key == "launchd":
            values["launchd"] = True
        else:
            values["extra"][key] = value
    for key in ("pythons", "missing", "broken"):
        values[key] = tuple(values[key])
    return Facts(**values)


@dataclass(frozen=True)
class Wish:
    """What the user asked `add` for, and what the workstation knows."""

    host: str  # as the user wrote it, for the messages
    name: str  # the node's name in the fleet
    service: str  # one of SERVICES, resolved (see service_kind)
    version: str  # the flota version to install
    build: str  # its build id (the wheel's source hash)
    python: str | None = None  # --python PATH
    need_mb: int = 0  # disk the install needs
    fleet: dict[str, str] = field(default_factory=dict)  # node name -> id, from the coordinator


def service_kind(facts: Facts, asked: str | None) -> str:
    """`--service`, or the OS's own: systemd on Linux, launchd on macOS."""
    if asked:
        return asked
    return "launchd" if facts.os == "Darwin" else "systemd"


def installed(facts: Facts) -> tuple[str, str, str] | None:
    """(version, build, node id) of the install on the host, if `add` made one."""
    m = facts.manifest
    if not m or "unreadable" in m:
        return None
    node = m.get("node") or {}
    return str(m.get("version", "")), str(m.get("build", "")), str(node.get("id", ""))


def problems(facts: Facts, wish: Wish) -> list[str]:
    """Why `add` cannot go ahead on this host, one line each (empty: it can)."""
    host, out = wish.host, []
    if facts.os not in ("Linux", "Darwin"):
        return [f"{host} runs {facts.os or 'an unknown OS'}: flota nodes run on Linux and macOS"]
    out += _python_problems(facts, wish)
    if not facts.git:
        out.append(
            f"git is not on the PATH of {facts.user} on {host}: install git (jobs fetch and push with it)"
        )
    if facts.disk_kb is not None and wish.need_mb and facts.disk_kb < wish.need_mb * 1024:
        out.append(
            f"{host} has {facts.disk_kb // 1024} MB free in {facts.home}; the install needs about "
            f"{wish.need_mb} MB: free some space"
        )
    out += _install_problems(facts, wish)
    out += _service_problems(facts, wish)
    if not NAME_RE.match(wish.name):
        out.append(
            f"{wish.name!r} is not a valid node name (letters, digits, '.', '_', '-'): pass --name NAME"
        )
    else:
        clash = wish.fleet.get(wish.name)
        mine = installed(facts)
        if clash is not None and (mine is None or mine[2] != clash):
            out.append(
                f"a node named {wish.name} is already in the fleet (id {clash}): pick another --name, "
                f"or remove that node first (flota node remove {wish.name})"
            )
    return out


def _python_problems(facts: Facts, wish: Wish) -> list[str]:
    py = facts.python
    if py is None:
        if wish.python is not None:
            if wish.python in facts.missing:
                return [f"--python {wish.python}: no such program on {wish.host}"]
            if wish.python in facts.broken:
                return [f"--python {wish.python} does not run as Python on {wish.host}"]
            found = facts.pythons[0] if facts.pythons else None
            what = f"{found.impl} {'.'.join(map(str, found.version))}" if found else "not a Python"
            return [f"--python {wish.python} on {wish.host} is {what}; flota needs CPython >= 3.11"]
        older = ", ".join(f"{p.path} is {'.'.join(map(str, p.version))}" for p in facts.pythons)
        return [
            f"no Python >= 3.11 on {wish.host}"
            + (f" ({older})" if older else "")
            + ": install one, or pass --python PATH"
        ]
    if not py.venv:
        return [
            f"{py.path} on {wish.host} has no venv module: install it "
            "(Debian, Ubuntu: apt install python3-venv)"
        ]
    return []


def _install_problems(facts: Facts, wish: Wish) -> list[str]:
    if facts.root_entries is None:
        return []
    mine = installed(facts)
    if mine is None:
        if facts.manifest is not None:
            return [f"{facts.root}/{MANIFEST} on {wish.host} is unreadable: remove {facts.root} by hand"]
        if set(facts.root_entries) - {STATE}:
            return [
                f"{wish.host} has {facts.root} but no flota install manifest in it: move it away, "
                "then run this again"
            ]
        return []  # only a node state dir kept by `uninstall --keep-state`: it is reused
    version, build, node_id = mine
    if not (facts.manifest or {}).get("complete"):
        return [
            f"an unfinished install of flota is on {wish.host} (an add that was interrupted): "
            f"flota node uninstall {wish.host}, then add it again"
        ]
    if (version, build) != (wish.version, wish.build):
        return [
            f"flota {version} ({build[:8]}) is installed on {wish.host} as node "
            f"{(facts.manifest or {}).get('node', {}).get('name', '?')}; installing {wish.version} "
            f"({wish.build[:8]}) is an upgrade: flota node upgrade NAME (or flota node uninstall first)"
        ]
    if node_id not in wish.fleet.values():
        return [
            f"{wish.host} has flota installed as node {node_id}, which the fleet does not know "
            f"(removed?): flota node uninstall {wish.host}, then add it again"
        ]
    asked = (facts.manifest or {}).get("service", {}).get("asked")
    if asked != wish.service:
        return [
            f"flota is installed on {wish.host} with --service {asked}: uninstall it first to change that"
        ]
    return []


def _service_problems(facts: Facts, wish: Wish) -> list[str]:
    host, kind = wish.host, wish.service
    linux, mac = facts.os == "Linux", facts.os == "Darwin"
    if kind == "systemd":
        if not linux:
            return [f"{host} runs macOS: it has no systemd; use --service launchd (or none)"]
        if not facts.systemctl:
            return [
                f"{host} has no systemd (no systemctl): use --service none (the node is then not restarted)"
            ]
        if not facts.systemd_user:
            why = f" ({facts.systemd_user_error})" if facts.systemd_user_error else ""
            return [
                f"{facts.user} on {host} has no systemd user instance{why}: use --service system "
                "(needs sudo), or --service none"
            ]
        if facts.linger is None:
            return [f"{host} has no loginctl, so the node would stop at logout: use --service system or none"]
    elif kind == "launchd":
        if not mac or not facts.launchd:
            return [f"{host} is not macOS (no launchctl): use --service systemd, system or none"]
    elif kind == "system":
        if linux and not facts.systemd_system:
            return [f"{host} does not run systemd: use --service none"]
        if mac and not facts.launchd:
            return [f"{host} has no launchctl: use --service none"]
        if not facts.sudo:
            why = f" ({facts.sudo_error})" if facts.sudo_error else ""
            return [
                f"--service system needs sudo without a password for {facts.user} on {host}{why}: "
                "allow it (sudoers NOPASSWD), or use --service systemd / none"
            ]
    elif kind != "none":
        return [f"unknown --service {kind!r}: one of {', '.join(SERVICES)}"]
    return []
