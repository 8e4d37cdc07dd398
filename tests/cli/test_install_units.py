"""What `flota node add` writes for a service, checked by the tools that read it: systemd's
own `systemd-analyze verify` for the units, plistlib for the launchd plists (no macOS
here: they are checked as text and by a round trip). And the preflight's rules, as a
table of facts in, problems out (cli/install/preflight.py is pure)."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import plistlib
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cli.client import CliError
from cli.install import preflight
from cli.install.preflight import Facts, Python, Wish, parse, problems, service_kind
from cli.install.service import LABEL, Layout, launchd_plist, service_file, systemd_unit
from cli.install.ssh import parse_target
from cli.install.uninstall import changes
from cli.install.wheelhouse import LLM_PACKAGES, NODE_PACKAGES, platform_tags
from tests.fleet import ROOT


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """An install whose `current/bin/python` exists (verify checks ExecStart), in a home
    whose name needs quoting."""
    home = tmp_path / "a home"
    root = home / ".local/share/flota"
    (root / "current/bin").mkdir(parents=True)
    (root / "current/bin/python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    user = pwd.getpwuid(os.getuid()).pw_name
    return Layout(home=str(home), user=user, uid=str(os.getuid()), root=str(root))


def _verify(unit: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is needed (the systemd package; scripts/test installs it)"
    return subprocess.run(
        [tool, *args, "verify", str(unit)], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_the_user_unit_passes_systemd_analyze_verify(layout: Layout, tmp_path: Path) -> None:
    unit = tmp_path / "flota-node.service"
    unit.write_text(systemd_unit(layout, system=False))
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    res = _verify(unit, "--user", env={"XDG_RUNTIME_DIR": str(runtime)})
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    text = unit.read_text()
    assert (
        f'ExecStart="{layout.root}/current/bin/python" -m node_agent start --state-dir "{layout.state}"'
        in text
    )
    assert "KillMode=process" in text and "WantedBy=default.target" in text and "User=" not in text
    assert service_file("systemd", layout) == f"{layout.home}/.config/systemd/user/flota-node.service"


def test_the_system_unit_runs_as_the_user_and_passes_verify(layout: Layout, tmp_path: Path) -> None:
    unit = tmp_path / f"flota-node-{layout.user}.service"
    unit.write_text(systemd_unit(layout, system=True))
    res = _verify(unit)
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    text = unit.read_text()
    assert f"User={layout.user}\n" in text and "WantedBy=multi-user.target" in text
    assert "After=network-online.target" in text


def test_verify_does_catch_a_broken_unit(layout: Layout, tmp_path: Path) -> None:
    """The check above can fail: a unit whose program is missing does not pass."""
    (Path(layout.root) / "current/bin/python").unlink()
    unit = tmp_path / "flota-node.service"
    unit.write_text(systemd_unit(layout, system=True))
    assert _verify(unit).returncode != 0


@pytest.mark.parametrize("system", [False, True])
def test_launchd_plists_round_trip(layout: Layout, system: bool) -> None:
    data = launchd_plist(layout, system)
    loaded = plistlib.loads(data)
    assert plistlib.loads(plistlib.dumps(loaded, sort_keys=True)) == loaded
    assert loaded["ProgramArguments"] == [
        layout.python,
        "-m",
        "node_agent",
        "start",
        "--state-dir",
        layout.state,
    ]
    assert loaded["RunAtLoad"] is True and loaded["KeepAlive"] == {"SuccessfulExit": False}
    assert loaded["StandardErrorPath"] == layout.log and loaded["AbandonProcessGroup"] is True
    text = data.decode()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist')
    if system:
        assert loaded["UserName"] == layout.user and loaded["Label"] == f"{LABEL}.{layout.user}"
        assert service_file("system-launchd", layout) == f"/Library/LaunchDaemons/{LABEL}.{layout.user}.plist"
    else:
        assert "UserName" not in loaded and loaded["Label"] == LABEL
        assert service_file("launchd", layout) == f"{layout.home}/Library/LaunchAgents/{LABEL}.plist"


# --- preflight: facts in, problems out -------------------------------------------------------

PY311 = Python("/usr/bin/python3", (3, 11, 2), "cpython", ("glibc", "2.36"), "", "x86_64", True)
LINUX = Facts(
    os="Linux", arch="x86_64", home="/home/a", user="a", uid="1000", hostname="laptop.local",
    pythons=(PY311,), git="git version 2.39.5", disk_kb=10_000_000, systemctl=True,
    systemd_user=True, systemd_system=True, linger="no", sudo=False, sudo_error="a password is required",
)  # fmt: skip
NODE = {"id": "abc", "name": "laptop"}
WISH = Wish("a@laptop", "laptop", "systemd", "0.1.0", "b" * 16)


def test_the_probe_output_parses_into_facts() -> None:
    text = "\n".join(
        [
            "os=Linux", "arch=aarch64", "home=/home/a", "user=a", "uid=1000", "hostname=pi",
            "python_missing=python3.14",
            'python=/usr/bin/python3 {"version": [3, 12, 1], "impl": "cpython", "libc": ["glibc", "2.31"], '
            '"mac": "", "machine": "aarch64", "venv": true}',
            "git=git version 2.30.2", "disk_kb=123456", "root_entries=node ", "daemon=running",
            "systemd_user=no Failed to connect to bus: No medium found", "linger=",
            "sudo=no sudo: a password is required",
        ]
    )  # fmt: skip
    f = parse(text)
    assert (f.os, f.arch, f.hostname, f.disk_kb, f.root_entries) == (
        "Linux",
        "aarch64",
        "pi",
        123456,
        ("node",),
    )
    assert f.python == Python(
        "/usr/bin/python3", (3, 12, 1), "cpython", ("glibc", "2.31"), "", "aarch64", True
    )
    assert f.missing == ("python3.14",) and f.daemon_running and f.systemctl and not f.systemd_user
    assert f.systemd_user_error == "Failed to connect to bus: No medium found"
    assert f.linger == "no" and not f.sudo and f.sudo_error == "sudo: a password is required"
    assert platform_tags(f, f.python)[:2] == ["manylinux_2_31_aarch64", "manylinux_2_30_aarch64"]
    assert "manylinux2014_aarch64" in platform_tags(f, f.python)


def test_the_probe_runs_here_and_changes_nothing(tmp_path: Path) -> None:
    """The real script, on this machine: it finds this Python and git, and writes nothing."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    out = subprocess.run(
        ["sh", "-s"], input=preflight.probe_script(None), capture_output=True, text=True, env=env
    )
    f = parse(out.stdout)
    assert f.os == "Linux" and f.home == str(home) and f.git.startswith("git version")
    assert f.python is not None and f.python.version[:2] >= (3, 11)
    assert f.root_entries is None and f.manifest is None
    assert list(home.iterdir()) == []
    script = preflight.probe_script("/nonexistent")
    missing = parse(
        subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, env=env).stdout
    )
    assert missing.python is None and missing.missing == ("/nonexistent",)


@pytest.mark.parametrize(
    ("facts", "wish", "want"),
    [
        (LINUX, WISH, []),
        (Facts(os="FreeBSD"), WISH, ["a@laptop runs FreeBSD: flota nodes run on Linux and macOS"]),
        (
            Facts(**{**LINUX.__dict__, "pythons": (Python("/usr/bin/python3", (3, 9, 2)),)}),
            WISH,
            ["no Python >= 3.11 on a@laptop (/usr/bin/python3 is 3.9.2): install one, or pass --python PATH"],
        ),
        (Facts(**{**LINUX.__dict__, "git": ""}), WISH,
         ["git is not on the PATH of a on a@laptop: install git (jobs fetch and push with it)"]),
        (Facts(**{**LINUX.__dict__, "disk_kb": 10_240}), Wish(**{**WISH.__dict__, "need_mb": 200}),
         ["a@laptop has 10 MB free in /home/a; the install needs about 200 MB: free some space"]),
        (Facts(**{**LINUX.__dict__, "systemd_user": False, "systemd_user_error": "No medium found"}), WISH,
         ["a on a@laptop has no systemd user instance (No medium found): use --service system (needs sudo), "
          "or --service none"]),
        (LINUX, Wish(**{**WISH.__dict__, "service": "system"}),
         ["--service system needs sudo without a password for a on a@laptop (a password is required): allow "
          "it (sudoers NOPASSWD), or use --service systemd / none"]),
        (LINUX, Wish(**{**WISH.__dict__, "service": "launchd"}),
         ["a@laptop is not macOS (no launchctl): use --service systemd, system or none"]),
        (LINUX, Wish(**{**WISH.__dict__, "fleet": {"laptop": "abc"}}),
         ["a node named laptop is already in the fleet (id abc): pick another --name, or remove that node "
          "first (flota node remove laptop)"]),
        (Facts(**{**LINUX.__dict__, "root_entries": ("versions", "current")}), WISH,
         ["a@laptop has /home/a/.local/share/flota but no flota install manifest in it: move it away, "
          "then run this again"]),
        # A state dir kept by uninstall --keep-state: reused.
        (Facts(**{**LINUX.__dict__, "root_entries": ("node",)}), WISH, []),
        (Facts(**{**LINUX.__dict__, "root_entries": ("install.json",),
                  "manifest": {"version": "0.0.9", "build": "a" * 16, "node": NODE, "complete": True}}),
         Wish(**{**WISH.__dict__, "fleet": {"laptop": "abc"}}),
         ["flota 0.0.9 (aaaaaaaa) is installed on a@laptop as node laptop; installing 0.1.0 (bbbbbbbb) is an "
          "upgrade: flota node upgrade NAME (or flota node uninstall first)"]),
        (Facts(**{**LINUX.__dict__, "root_entries": ("install.json",),
                  "manifest": {"version": "0.1.0", "build": "b" * 16, "node": NODE, "complete": True,
                               "service": {"asked": "systemd"}}}),
         Wish(**{**WISH.__dict__, "fleet": {"laptop": "abc"}}), []),  # installed: add is idempotent
        (Facts(**{**LINUX.__dict__, "root_entries": ("install.json",),
                  "manifest": {"version": "0.1.0", "build": "b" * 16, "node": NODE}}), WISH,
         ["an unfinished install of flota is on a@laptop (an add that was interrupted): flota node "
          "uninstall a@laptop, then add it again"]),
    ],
)  # fmt: skip
def test_preflight_problems(facts: Facts, wish: Wish, want: list[str]) -> None:
    assert problems(facts, wish) == want


def test_the_service_kind_defaults_to_the_os_own() -> None:
    assert service_kind(LINUX, None) == "systemd"
    assert service_kind(Facts(os="Darwin"), None) == "launchd"
    assert service_kind(LINUX, "none") == "none"


@pytest.mark.parametrize(
    ("text", "want"),
    [("a@h", ("a", "h", None)), ("a@h:2222", ("a", "h", 2222)), ("a@[::1]:22", ("a", "::1", 22)),
     ("h", (None, "h", None)), ("a@10.0.0.7", ("a", "10.0.0.7", None))],
)  # fmt: skip
def test_targets_parse(text: str, want: tuple[str | None, str, int | None]) -> None:
    assert parse_target(text) == want


def test_the_node_daemon_needs_only_the_node_packages() -> None:
    """Every third-party module node_agent/ and protos/ import (the llm agent's own process
    aside) comes from NODE_PACKAGES or their dependencies, so the wheelhouse `add` ships
    without --with llm is enough; the llm agent's imports are in LLM_PACKAGES."""

    def norm(name: str) -> str:
        return re.split(r"[<>=!~;\[ ]", name, maxsplit=1)[0].strip().lower().replace("_", "-")

    def closure(names: tuple[str, ...]) -> set[str]:
        """The packages and everything they require (what pip installs for them)."""
        seen: set[str] = set()
        todo = [norm(n) for n in names]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            try:
                reqs = importlib.metadata.requires(name) or []
            except importlib.metadata.PackageNotFoundError:
                continue
            todo += [norm(r) for r in reqs if "extra ==" not in r]
        return seen

    dists = importlib.metadata.packages_distributions()
    shipped = closure(NODE_PACKAGES)
    for package, allowed in (
        ("node_agent", shipped),
        ("protos", shipped),
        ("node_agent/agents/llm", shipped | closure(LLM_PACKAGES)),
    ):
        for path in (ROOT / package).rglob("*.py"):
            if package != "node_agent/agents/llm" and "agents/llm" in path.as_posix():
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for top in {n.split(".")[0] for n in names} - {"node_agent", "protos", "__future__"}:
                    if top in dists:
                        assert {norm(d) for d in dists[top]} & allowed, f"{path} imports {top} ({dists[top]})"
    assert LLM_PACKAGES == ("litellm",)


def test_uninstall_deletes_only_what_add_would_have_made() -> None:
    """The manifest is on the host, writable by its user: one that names another service
    file, another directory or an odd user name is refused, not followed."""
    unit = "/etc/systemd/system/flota-node-a.service"
    root = "/home/a/.local/share/flota"
    service = {"kind": "system-systemd", "file": unit, "linger": False}
    good = {"home": "/home/a", "user": "a", "root": root, "created": ["/home/a/.local"], "service": service}
    assert changes(good, False) == [
        "stop and disable the system-systemd service (/etc/systemd/system/flota-node-a.service)",
        "remove /etc/systemd/system/flota-node-a.service",
        "remove /home/a/.local/share/flota",
        "remove /home/a/.local if empty (add made it)",
    ]
    for bad, why in (
        ({"service": {"kind": "system-systemd", "file": "/etc/passwd"}}, "as its service file"),
        ({"root": "/home/a"}, "as flota's directory"),
        ({"user": "../../x"}, "names the user"),
    ):
        with pytest.raises(CliError) as err:
            changes({**good, **bad}, False)
        assert why in str(err.value)
