"""`flota node uninstall NAME|USER@HOST`: undo exactly what `flota node add` did, by the
host's manifest (cli/install/manifest.py), and remove the node from the fleet.

`undo` is also how a failed `add` puts the host back as it was.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from typing import Any

from cli.client import Client, CliError
from cli.install.manifest import delete_record, load_record
from cli.install.preflight import MANIFEST, STATE, install_root
from cli.install.service import Layout, service_file, stop_commands
from cli.install.ssh import Remote, SshOptions, connect

__all__ = ["changes", "undo", "uninstall"]

Say = Callable[[str], None]


def _layout(m: dict[str, Any], home: str | None = None) -> Layout:
    """The install's paths; a manifest that names other places than add would have used
    (another home, a service file elsewhere) is refused: uninstall deletes what it names."""
    root = str(m.get("root", ""))
    if home is not None and m.get("home") != home:
        raise CliError(
            f"the install manifest is for the home {m.get('home')!r}, not {home}: remove it by hand"
        )
    home = str(m.get("home", ""))
    if not re.fullmatch(r"[A-Za-z0-9._][A-Za-z0-9._-]*", str(m.get("user", ""))):
        raise CliError(f"the install manifest names the user {m.get('user')!r}: remove it by hand")
    svc = m.get("service") or {}
    if svc.get("file") and svc["file"] != service_file(
        str(svc.get("kind")), Layout(home, str(m.get("user")), "", root)
    ):
        raise CliError(
            f"the install manifest names {svc['file']!r} as its service file; refusing to delete it"
        )
    if not home or root != install_root(home):
        raise CliError(
            f"the install manifest names {root!r} as flota's directory, not {install_root(home)}; "
            "refusing to delete it: remove it by hand"
        )
    return Layout(home=home, user=str(m.get("user", "")), uid=str(m.get("uid", "")), root=root)


def changes(m: dict[str, Any], keep_state: bool) -> list[str]:
    """What `undo` does, one line each (for --dry-run)."""
    layout, svc = _layout(m), m.get("service") or {}
    out = []
    if svc.get("kind"):
        out.append(
            f"stop and disable the {svc['kind']} service" + (f" ({svc['file']})" if svc.get("file") else "")
        )
    else:
        out.append("stop the node daemon, if it runs")
    if svc.get("file"):
        out.append(f"remove {svc['file']}")
    if svc.get("linger"):
        out.append(f"loginctl disable-linger {layout.user} (add enabled it)")
    if keep_state:
        out.append(f"remove {layout.root}/* except {layout.state} (the node's key and state)")
    else:
        out.append(f"remove {layout.root}")
        out += [f"remove {d} if empty (add made it)" for d in reversed(m.get("created") or [])]
    return out


def _sh(remote: Remote, command: str) -> None:
    remote.run(command, timeout=120)  # each undo step may find its work done already


def undo(remote: Remote, m: dict[str, Any], keep_state: bool, say: Say) -> None:
    """Stop the service, remove what the manifest says add made (in reverse)."""
    layout, svc = _layout(m), m.get("service") or {}
    kind, path = str(svc.get("kind") or "none"), str(svc.get("file") or "")
    python = str(m.get("python") or "python3")
    for command in stop_commands(kind, layout, path, python):
        _sh(remote, command)
    sudo = "sudo -n " if kind.startswith("system-") else ""
    if path:
        _sh(remote, f"{sudo}rm -f -- {shlex.quote(path)}")
        if kind.endswith("systemd"):
            _sh(remote, f"{sudo}systemctl {'' if sudo else '--user '}daemon-reload")
        say(f"removed the {kind} service ({path})")
    if svc.get("linger"):
        _sh(remote, f"loginctl disable-linger {shlex.quote(layout.user)}")
        say(f"disabled linger for {layout.user}")
    for d in reversed(svc.get("created") or []):
        _sh(remote, f"rmdir -- {shlex.quote(d)} 2>/dev/null || true")
    root = shlex.quote(layout.root)
    if keep_state:
        _sh(
            remote,
            f"find {root} -mindepth 1 -maxdepth 1 ! -name {STATE} -exec rm -rf {{}} + 2>/dev/null || true",
        )
        say(f"removed {layout.root}, except the node's state ({layout.state})")
        return
    _sh(remote, f"rm -rf -- {root}")
    for d in reversed(m.get("created") or []):
        _sh(remote, f"rmdir -- {shlex.quote(d)} 2>/dev/null || true")
    say(f"removed {layout.root}")


def read_manifest(remote: Remote) -> dict[str, Any] | None:
    home = remote.run('printf %s "$HOME"').out.strip()
    m = _read(remote, home)
    if m is not None:
        _layout(m, home)  # it names this home and add's own paths
    return m


def _read(remote: Remote, home: str) -> dict[str, Any] | None:
    data = remote.read(f"{install_root(home)}/{MANIFEST}")
    if data is None:
        return None
    try:
        m = json.loads(data)
    except ValueError:
        raise CliError(
            f"{install_root(home)}/{MANIFEST} on {remote.target.host} is unreadable: remove "
            f"{install_root(home)} by hand"
        ) from None
    return m if isinstance(m, dict) else None


def uninstall(
    client: Client | None,
    what: str,
    ssh: SshOptions,
    keep_state: bool,
    dry_run: bool,
    say: Say,
) -> dict[str, Any]:
    """Undo an install on `what` (a node name add recorded, or USER@HOST); `client` None
    keeps the node in the fleet."""
    record = None if "@" in what else load_record(what)
    if record is not None:
        ssh = SshOptions(
            identity=ssh.identity or record.get("identity"),
            known_hosts=ssh.known_hosts or record.get("known_hosts"),
            fingerprint=ssh.fingerprint or record.get("fingerprint"),
            ask=ssh.ask,
            save_accepted=ssh.save_accepted,
        )
    if client is not None:
        client.list_nodes()  # the coordinator answers, before anything changes on the host
    remote = connect(str(record["target"]) if record else what, ssh)
    try:
        m = read_manifest(remote)
        if m is None:
            raise CliError(
                f"{remote.target} has no flota installed by flota node add (no {MANIFEST}): nothing to do"
            )
        node = m.get("node") or {}
        plan = changes(m, keep_state)
        if client is not None and node.get("id"):
            plan.append(f"remove node {node.get('name')} ({node['id']}) from the fleet")
        if dry_run:
            return {"host": str(remote.target), "node": node, "dry_run": True, "changes": plan}
        undo(remote, m, keep_state, say)
    finally:
        remote.close()
    removed = False
    if client is not None and node.get("id"):
        try:
            client.remove_node(str(node["id"]))
            removed = True
            say(f"removed node {node.get('name')} from the fleet")
        except CliError as exc:
            if "not found" not in str(exc).lower() and "unknown" not in str(exc).lower():
                raise
    if node.get("name"):
        delete_record(str(node["name"]))
    return {
        "host": str(remote.target),
        "node": node,
        "dry_run": False,
        "changes": plan,
        "removed_from_fleet": removed,
        "kept_state": keep_state,
    }
