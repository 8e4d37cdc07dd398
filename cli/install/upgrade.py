"""`flota node upgrade NAME [--all]`: this CLI's flota on a node `flota node add` installed,
beside the old one, its running jobs kept.

Steps, recorded in the host's manifest (cli/install/manifest.py) as they are done: the
wheelhouse for the host (cli/install/wheelhouse.py, as add builds it) into a new venv
`versions/<new>` (add's own steps); the daemon stopped "restart, keep jobs" (SIGUSR1: no
goodbye, the jobs run on under their keeper); `current` switched to the new version; the
service started again; then a wait (`--wait S`) until the node is online with the new
version (ListNodes: NodeInfo.version). If it is not by then: rolled back, the same way
round (the new daemon stopped keeping jobs, `current` back, the old daemon started, the
new venv removed), and the command fails naming why. Uninstall removes the whole install
root, so every version dir an upgrade made goes with it; the manifest lists them.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from typing import Any

from cli import __version__
from cli.client import Client, CliError
from cli.install import wheelhouse
from cli.install.add import make_venv, must, pip_install, ship
from cli.install.manifest import encode, load_record, records
from cli.install.preflight import parse, probe_script
from cli.install.service import Layout, restart_stop, resume_commands
from cli.install.ssh import Remote, SshOptions, connect
from cli.install.uninstall import read_manifest

__all__ = ["label", "plan", "upgrade", "upgrade_all", "version_dir"]

Say = Callable[[str], None]


def label(version: str, build: str, other_version: str, other_build: str) -> str:
    """`version`, with its build when only that tells it from the other (version, build)."""
    if version == other_version and build and other_build and build != other_build:
        return f"{version} (build {build[:8]})"
    return version


def version_dir(m: dict[str, Any], new: str, build: str) -> str:
    """The directory under versions/ for flota `new` of `build`: the version's own name,
    or `VERSION+BUILD` for another build of the version the node runs (whose directory is
    in use)."""
    return f"{new}+{build[:8]}" if new == str(m.get("version", "")) else new


def plan(m: dict[str, Any], new: str, build: str) -> list[str]:
    """What an upgrade of the install `m` to flota `new` of `build` does, one line each; []
    when it runs that already. An install is its version and its build: another build of
    the same version is an upgrade too (as `add` says)."""
    old, had = str(m.get("version", "")), str(m.get("build", ""))
    if old == new and (had == build or not build):
        return []
    root = str(m.get("root", ""))
    to, was = label(new, build, old, had), label(old, had, new, build)
    vdir = version_dir(m, new, build)
    return [
        f"install flota {to} into {root}/versions/{vdir} (beside {was})",
        "stop the node daemon keeping its jobs (SIGUSR1)",
        f"point {root}/current at versions/{vdir}",
        "start the node daemon again",
        f"wait for the node to be online with flota {to}; else roll back to {was}",
    ]


def _ssh(record: dict[str, Any], ssh: SshOptions) -> SshOptions:
    return SshOptions(
        identity=ssh.identity or record.get("identity"),
        known_hosts=ssh.known_hosts or record.get("known_hosts"),
        fingerprint=ssh.fingerprint or record.get("fingerprint"),
        ask=ssh.ask,
        save_accepted=ssh.save_accepted,
    )


def upgrade_all(
    client: Client, ssh: SshOptions, wait_s: float, dry_run: bool, say: Say
) -> list[dict[str, Any]]:
    """Every node installed from this machine, one after the other; one that fails is
    reported (`state: "failed"`) and the others still go."""
    names = records()
    if not names:
        raise CliError("no node was installed from this machine (flota node add): nothing to upgrade")
    out = []
    for name in names:
        try:
            out.append(upgrade(client, name, ssh, wait_s, dry_run, say))
        except CliError as exc:
            out.append({"name": name, "state": "failed", "error": str(exc)})
    return out


def upgrade(
    client: Client, name: str, ssh: SshOptions, wait_s: float, dry_run: bool, say: Say
) -> dict[str, Any]:
    record = load_record(name)
    client.list_nodes()  # the coordinator answers, before anything changes on the host
    remote = connect(str(record["target"]), _ssh(record, ssh))
    try:
        return _upgrade(client, remote, name, wait_s, dry_run, say)
    finally:
        remote.close()


def _upgrade(
    client: Client, remote: Remote, name: str, wait_s: float, dry_run: bool, say: Say
) -> dict[str, Any]:
    m = read_manifest(remote)
    if m is None or not m.get("complete"):
        raise CliError(f"{remote.target} has no complete install by flota node add: run flota node add there")
    node = m.get("node") or {}
    old, new = str(m.get("version", "")), __version__
    summary: dict[str, Any] = {
        "name": name,
        "id": node.get("id"),
        "host": str(remote.target),
        "from": old,
        "to": new,
    }
    build = wheelhouse.local_build()
    summary |= {"from_build": str(m.get("build", "")), "build": build}
    changes = plan(m, new, build)
    if not changes:
        return summary | {"state": "already", "changes": []}
    if dry_run:
        return summary | {"state": "dry-run", "changes": changes}
    facts = parse(remote.run("sh -s", stdin=probe_script(str(m["python"])).encode(), timeout=60).out)
    py = facts.python
    if py is None:
        raise CliError(f"{m['python']} no longer runs on {remote.target}: pass it to flota node add again")
    layout = Layout(str(m["home"]), str(m["user"]), str(m["uid"]), str(m["root"]))
    svc = m.get("service") or {}
    kind, path = str(svc.get("kind") or "none"), str(svc.get("file") or "")
    wh = wheelhouse.build(facts, py, tuple(m.get("extras") or ()), bool(m.get("online")))
    how = "cached" if wh.cached else "built"
    say(f"wheelhouse: {len(wh.files())} wheels, {wh.size / 1048576:.1f} MB ({how})")
    new_dir, old_dir = version_dir(m, new, wh.build), str(m.get("dir") or old)
    vdir, incoming = layout.version_dir(new_dir), f"{layout.root}/incoming"
    say(changes[0])
    versions = list(dict.fromkeys([*(m.get("versions") or [old]), new_dir]))
    m["versions"] = versions  # recorded first: the dir is there from now on
    _save(remote, layout, m)
    remote.run(f"rm -rf -- {shlex.quote(vdir)} {shlex.quote(incoming)}")  # a failed try's leftovers
    try:
        ship(remote, wh, incoming)
        make_venv(remote, layout, py.path, vdir)
        pip_install(remote, wh, incoming, vdir, tuple(m.get("extras") or ()), bool(m.get("online")))
    except (CliError, OSError) as exc:
        _forget(remote, layout, m, new_dir, vdir, incoming)
        raise CliError(f"{exc} (flota {old} runs on, unchanged)") from None
    started = time.time()
    _switch(remote, layout, kind, path, str(m["python"]), new_dir, say)
    try:
        _wait_version(client, str(node.get("id")), new, wh.build, wait_s)
    except CliError as why:
        tail = remote.run(f"tail -n 1 {shlex.quote(layout.log)} 2>/dev/null").out.strip()
        say(f"flota {new} did not come online: rolling back to {old}")
        _switch(remote, layout, kind, path, str(m["python"]), old_dir, say)
        _forget(remote, layout, m, new_dir, vdir, incoming)
        m.setdefault("upgrades", []).append({"from": old, "to": new, "at": started, "state": "rolled back"})
        _save(remote, layout, m)
        _wait_version(client, str(node.get("id")), old, "", max(wait_s, 30.0))
        raise CliError(
            f"{why}" + (f" (its log ends: {tail[-200:]})" if tail else "") + f"; rolled back: node {name} "
            f"runs flota {old} again"
        ) from None
    m["version"], m["build"], m["dir"] = new, wh.build, new_dir
    m.setdefault("upgrades", []).append({"from": old, "to": new, "at": started, "state": "upgraded"})
    _save(remote, layout, m)
    return summary | {"state": "upgraded", "changes": changes, "seconds": round(time.time() - started, 1)}


def _save(remote: Remote, layout: Layout, m: dict[str, Any]) -> None:
    remote.write(layout.manifest, encode(m), 0o600)


def _forget(
    remote: Remote, layout: Layout, m: dict[str, Any], version: str, vdir: str, incoming: str
) -> None:
    remote.run(f"rm -rf -- {shlex.quote(vdir)} {shlex.quote(incoming)}")
    m["versions"] = [v for v in m.get("versions") or [] if v != version]
    _save(remote, layout, m)


def _switch(
    remote: Remote, layout: Layout, kind: str, path: str, python: str, version: str, say: Say
) -> None:
    """Stop the daemon keeping its jobs, point `current` at `version`, start it again."""
    stopped = must(
        remote, restart_stop(layout, python), "cannot stop the node daemon keeping its jobs", timeout=60
    )
    say(f"stopped the node daemon keeping its jobs ({stopped.strip() or 0} daemon)")
    current = f"{layout.root}/current"
    must(remote, f"ln -sfn versions/{shlex.quote(version)} {shlex.quote(current)}", "cannot link current")
    for command in resume_commands(kind, layout, path):
        must(remote, command, "cannot start the node daemon")
    say(f"started flota {version}")


def _wait_version(client: Client, node_id: str, version: str, build: str, wait_s: float) -> None:
    """Until the node is online with `version` (and `build`, unless ""): the new daemon."""
    deadline = time.monotonic() + wait_s
    while True:
        for n in client.list_nodes().nodes:
            i = n.info
            if (
                i.id == node_id
                and n.state == "online"
                and i.version == version
                and (not build or i.build == build)
            ):
                return
        if time.monotonic() >= deadline:
            raise CliError(f"the node did not come online with flota {version} within {wait_s:.0f} s")
        time.sleep(0.3)
