"""`flota node add` and `flota node uninstall`: the flags, checked, then cli/install/add.py
and uninstall.py. Progress goes to stderr; the summary (or `--json` object) to stdout."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cli.client import CliError
from cli.install.add import AddArgs, add
from cli.install.preflight import SERVICES
from cli.install.ssh import SshOptions, parse_target
from cli.install.uninstall import uninstall
from cli.install.upgrade import label, upgrade, upgrade_all
from cli.install.wheelhouse import EXTRAS
from cli.options import check_address, options
from cli.render import console, print_json
from protos.limits import LABEL_KEY_RE, LABEL_VALUE_RE, PROFILE_RE

__all__ = ["node_add", "node_uninstall", "node_upgrade"]

_FINGERPRINT_HELP = "Trust the host key with this fingerprint (SHA256:..., as ssh-keygen -lf prints it)."


def _say(line: str) -> None:
    print(f"flota: {line}", file=sys.stderr, flush=True)


def _ask(question: str) -> bool:
    return typer.confirm(question, default=False, err=True)


def _ssh(identity: str | None, known_hosts: str | None, fingerprint: str | None, dry_run: bool) -> SshOptions:
    if fingerprint is not None and not fingerprint.startswith("SHA256:"):
        raise CliError(
            f"malformed --fingerprint {fingerprint!r} (expected SHA256:..., as ssh-keygen -lf prints)"
        )
    terminal = sys.stdin.isatty() and sys.stderr.isatty()
    return SshOptions(
        identity=identity,
        known_hosts=known_hosts,
        fingerprint=fingerprint,
        ask=_ask if terminal else None,
        save_accepted=not dry_run,
    )


def _labels(items: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(value):
            raise CliError(f"malformed --label {item!r} (expected KEY=VALUE)")
        out.append((key, value))
    return tuple(out)


IdentityOpt = Annotated[str | None, typer.Option(metavar="KEY", help="The ssh private key to log in with.")]
KnownHostsOpt = Annotated[
    str | None,
    typer.Option(
        metavar="FILE", help="known_hosts file to check the host key in (default ~/.ssh/known_hosts)."
    ),
]
FingerprintOpt = Annotated[str | None, typer.Option(metavar="SHA256:...", help=_FINGERPRINT_HELP)]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print every change; make none.")]


def node_add(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="USER@HOST[:PORT]", help="Where to install the node.")],
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Node name (default: the host's name).")
    ] = None,
    network: Annotated[
        str | None, typer.Option(metavar="PROFILE", help="Declare its network profile.")
    ] = None,
    slots: Annotated[int | None, typer.Option(metavar="N", help="Jobs it runs at once.")] = None,
    label: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", help="A label; repeatable.")] = None,
    listen: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="Where the node listens.")
    ] = "0.0.0.0:7380",
    service: Annotated[
        str | None,
        typer.Option(
            metavar="KIND",
            help="systemd (Linux default), launchd (macOS default), system (needs sudo), none.",
        ),
    ] = None,
    python: Annotated[
        str | None, typer.Option(metavar="PATH", help="The host's Python (>= 3.11) to use.")
    ] = None,
    with_: Annotated[
        list[str] | None, typer.Option("--with", metavar="EXTRA", help="Also install: llm (the llm agent).")
    ] = None,
    online: Annotated[
        bool,
        typer.Option("--online", help="Let the host's pip fetch the node's packages from its own index."),
    ] = False,
    dial_home: Annotated[
        bool,
        typer.Option("--dial-home", help="The node opens the link to the coordinator itself (behind NAT)."),
    ] = False,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = None,
    fingerprint: FingerprintOpt = None,
    wait: Annotated[
        float, typer.Option(metavar="SECONDS", help="How long to wait for the node to be online (0: not).")
    ] = 60.0,
    dry_run: DryRunOpt = False,
) -> None:
    """Install a node daemon on a machine over SSH and run it as a service."""
    o = options(ctx)
    parse_target(target)
    if service is not None and service not in SERVICES:
        raise CliError(f"unknown --service {service!r}: one of {', '.join(SERVICES)}")
    if network is not None and not PROFILE_RE.match(network):
        raise CliError(f"malformed --network {network!r} (lowercase letters, digits, '.', '_', '-')")
    if slots is not None and not 1 <= slots <= 256:
        raise CliError(f"--slots {slots}: a node runs 1 to 256 jobs at once")
    extras = tuple(dict.fromkeys(with_ or []))
    for extra in extras:
        if extra not in EXTRAS:
            raise CliError(f"unknown --with {extra!r}: one of {', '.join(EXTRAS)}")
    args = AddArgs(
        target=target,
        ssh=_ssh(identity, known_hosts, fingerprint, dry_run),
        name=name,
        network=network,
        slots=slots,
        labels=_labels(label or []),
        listen=check_address(listen, "--listen", 7380),
        service=service,
        python=python,
        extras=extras,
        online=online,
        dial_home=dial_home,
        dry_run=dry_run,
        wait_s=max(0.0, wait),
    )
    summary = add(o.client(), args, _say)
    _print(o.json, summary, _add_line(summary))


def _add_line(s: dict[str, Any]) -> str:
    size = f"; wheelhouse {s['wheelhouse_bytes'] / 1048576:.1f} MB" if "wheelhouse_bytes" in s else ""
    if s["state"] == "dry-run":
        return f"would install flota {s['version']} on {s['host']} as node {s['name']}{size}:\n" + "\n".join(
            f"  {c}" for c in s["changes"]
        )
    if s["state"] == "already installed":
        return f"node {s['name']} ({s['id']}): flota {s['version']} already installed on {s['host']}; " + (
            "; ".join(s["changes"]) or "nothing changed"
        )
    where = f"flota {s['version']} on {s['host']}, service {s['service']}"
    return f"node {s['name']} ({s['id']}) is online: {where}{size}"


def _print(as_json: bool, data: dict[str, Any], line: str) -> None:
    if as_json:
        print_json(data)
    else:
        console.print(line, highlight=False, markup=False)


def node_uninstall(
    ctx: typer.Context,
    what: Annotated[str, typer.Argument(metavar="NAME|USER@HOST", help="A node add installed, or its host.")],
    keep_state: Annotated[
        bool, typer.Option("--keep-state", help="Keep the node's state directory (its key).")
    ] = False,
    keep_in_fleet: Annotated[
        bool, typer.Option("--keep-in-fleet", help="Do not remove the node from the fleet.")
    ] = False,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = None,
    fingerprint: FingerprintOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Remove exactly what `flota node add` installed on a host, and the node from the fleet."""
    o = options(ctx)
    if "@" in what:
        parse_target(what)
    client = None if keep_in_fleet else o.client()
    summary = uninstall(
        client, what, _ssh(identity, known_hosts, fingerprint, dry_run), keep_state, dry_run, _say
    )
    node = summary["node"]
    if dry_run:
        line = f"would uninstall node {node.get('name')} from {summary['host']}:\n" + "\n".join(
            f"  {c}" for c in summary["changes"]
        )
    else:
        line = (
            f"uninstalled node {node.get('name')} from {summary['host']}"
            + ("; its state directory is kept" if keep_state else "")
            + ("; removed from the fleet" if summary.get("removed_from_fleet") else "")
        )
    _print(o.json, summary, line)


def node_upgrade(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(metavar="NAME", help="A node flota node add installed from here.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every node installed from this machine.")] = False,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = None,
    fingerprint: FingerprintOpt = None,
    wait: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", help="How long the new version has to come online before a rollback."
        ),
    ] = 60.0,
    dry_run: DryRunOpt = False,
) -> None:
    """Install this flota on a node beside its old one and restart it, its running jobs kept;
    roll back if it does not come online."""
    o = options(ctx)
    if (name is None) == (not all_):
        raise CliError("name one node to upgrade, or pass --all")
    if wait <= 0:
        raise CliError(f"--wait {wait:g}: the new version needs some seconds to come online")
    ssh = _ssh(identity, known_hosts, fingerprint, dry_run)
    if all_:
        done = upgrade_all(o.client(), ssh, wait, dry_run, _say)
        if o.json:
            print_json(done)
        else:
            console.print("\n".join(_upgrade_line(s) for s in done), highlight=False, markup=False)
        failed = [s["name"] for s in done if s["state"] == "failed"]
        if failed:
            raise CliError(f"{len(failed)} of {len(done)} nodes were not upgraded: {', '.join(failed)}")
        return
    assert name is not None
    summary = upgrade(o.client(), name, ssh, wait, dry_run, _say)
    _print(o.json, summary, _upgrade_line(summary))


def _upgrade_line(s: dict[str, Any]) -> str:
    if s["state"] == "failed":
        return f"node {s['name']}: not upgraded: {s['error']}"
    if s["state"] == "already":
        return f"node {s['name']} is already at flota {s['to']}; nothing changed"
    # A build is named only beside another build of the same version.
    was = label(s["from"], s["from_build"], s["to"], s["build"])
    to = label(s["to"], s["build"], s["from"], s["from_build"])
    if s["state"] == "dry-run":
        return f"would upgrade node {s['name']} from flota {was} to {to}:\n" + "\n".join(
            f"  {c}" for c in s["changes"]
        )
    return f"node {s['name']} upgraded from flota {was} to {to} in {s['seconds']} s; its jobs kept"
