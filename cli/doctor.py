"""`flota doctor`: the security posture of the coordinator and nodes kept on this machine.

It reads only local files (state directories under FLOTA_HOME, or the ones given) and
says, for each check, ok / warn / fail and what to do. Nothing is changed.

cryptography and tomllib are imported where they are used: this module is loaded by every
`flota` command (it registers `doctor`), and cryptography alone costs about 50 ms.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.client import EXIT_FAILED
from cli.options import options
from cli.render import console, print_json
from protos.contract import flota_home

__all__ = ["Check", "diagnose", "doctor"]

EXPIRY_WARN_DAYS = 30


@dataclass(frozen=True)
class Check:
    where: str  # "coordinator", "admin", "node <dir>"
    check: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _private(where: str, path: Path, what: str, out: list[Check]) -> None:
    """A key or a state directory: readable by its owner only."""
    if not path.exists():
        out.append(Check(where, what, "fail", f"{path} is missing"))
        return
    mode = _mode(path)
    if mode & 0o077:
        want = "700" if path.is_dir() else "600"
        out.append(
            Check(where, what, "fail", f"{path} is mode {mode:o}: others can read it", f"chmod {want} {path}")
        )
    else:
        out.append(Check(where, what, "ok", f"{path} is mode {mode:o}"))


def _certificate(where: str, path: Path, what: str, out: list[Check], now: dt.datetime) -> None:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        out.append(Check(where, what, "fail", f"cannot read {path}: {exc}"))
        return
    left = cert.not_valid_after_utc - now
    if left.total_seconds() <= 0:
        status, detail = "fail", f"expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    elif left.days < EXPIRY_WARN_DAYS:
        status, detail = "warn", f"expires in {left.days} days ({cert.not_valid_after_utc:%Y-%m-%d})"
    else:
        status, detail = "ok", f"valid until {cert.not_valid_after_utc:%Y-%m-%d}"
    subject = cert.subject.rfc4514_string()
    fix = "enroll again: flota token create, then flota node join" if status != "ok" else ""
    out.append(Check(where, what, status, f"{subject}: {detail}", fix))


def _toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(path.read_text()) if path.exists() else {}
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _exposure(where: str, addresses: list[str], out: list[Check]) -> None:
    """Where the daemon can be reached (from the state file it writes while it runs)."""
    if not addresses:
        return
    public = []
    for address in addresses:
        host = address.rpartition(":")[0].strip("[]")
        try:
            if ipaddress.ip_address(host).is_global:
                public.append(address)
        except ValueError:
            continue
    if public:
        out.append(
            Check(
                where,
                "exposure",
                "warn",
                f"reachable on public addresses {', '.join(public)}: anyone on that network can "
                "connect (mutual TLS refuses them, but the port is visible)",
                "listen on a private address only, e.g. --listen 192.168.1.10:PORT",
            )
        )
    else:
        out.append(
            Check(where, "exposure", "ok", f"reachable at {', '.join(addresses)} (private or loopback)")
        )


def _running_addresses(path: Path, *keys: str) -> list[str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    found: list[str] = []
    for key in keys:
        value = data.get(key)
        found += [str(v) for v in value] if isinstance(value, list) else [str(value)] if value else []
    return found


def _coordinator(state: Path, out: list[Check], now: dt.datetime) -> None:
    where = "coordinator"
    _private(where, state, "state directory", out)
    _private(where, state / "ca" / "ca.key", "CA private key", out)
    _certificate(where, state / "ca" / "ca.pem", "CA certificate", out, now)
    # SQLite's write-ahead log and shared memory hold recent rows too: as private as the file.
    for name, what in (
        ("flota.db", "database"),
        ("flota.db-wal", "database log"),
        ("flota.db-shm", "database index"),
    ):
        if (state / name).exists():
            _private(where, state / name, what, out)
    if (state / "secrets").exists():
        _private(where, state / "secrets", "secrets keyring", out)
        for secret in sorted((state / "secrets").iterdir()):
            _private(where, secret, f"secret {secret.name}", out)
    _exposure(where, _running_addresses(state / "coordinator.json", "api", "join"), out)


def _admin(admin: Path, out: list[Check], now: dt.datetime) -> None:
    _private("admin", admin / "key.pem", "admin key", out)
    _certificate("admin", admin / "cert.pem", "admin certificate", out, now)


def _node(state: Path, out: list[Check], now: dt.datetime) -> None:
    where = f"node {state}"
    _private(where, state, "state directory", out)
    ident = state / "identity"
    if not (ident / "node.key").exists():
        out.append(
            Check(
                where, "enrollment", "warn", "not joined to a coordinator", "flota node join ADDR --token T"
            )
        )
        return
    _private(where, ident / "node.key", "node key", out)
    _certificate(where, ident / "node.pem", "node certificate", out, now)
    config = _toml(state / "node.toml")
    _exposure(where, _running_addresses(state / "daemon.json", "addresses"), out)
    remotes = config.get("allow_remotes") or []
    if remotes:
        out.append(Check(where, "remote allow-list", "ok", f"only {', '.join(map(str, remotes))}"))
    else:
        out.append(
            Check(
                where,
                "remote allow-list",
                "warn",
                "jobs may fetch from and push to any repository the coordinator names",
                f'set allow_remotes = ["/srv/git/*", "git@github.com:you/*"] in {state / "node.toml"} '
                "(or start with --allow-remote GLOB)",
            )
        )


def diagnose(home: Path, node_dirs: list[Path] | None = None) -> list[Check]:
    """Every check for the state kept under `home` (and the extra node state dirs)."""
    now = dt.datetime.now(dt.UTC)
    out: list[Check] = []
    if (home / "coordinator" / "ca").exists():
        _coordinator(home / "coordinator", out, now)
    if (home / "admin" / "key.pem").exists():
        _admin(home / "admin", out, now)
    nodes = [home / "node", *sorted((home / "local").glob("node-*")), *(node_dirs or [])]
    for state in nodes:
        if state.is_dir():
            _node(state, out, now)
    return out


def doctor(
    ctx: typer.Context,
    state_dir: Annotated[
        list[Path] | None, typer.Option(help="Also check this node state directory; repeatable.")
    ] = None,
) -> None:
    """Check the security posture of the coordinator and nodes kept on this machine."""
    o = options(ctx)
    checks = diagnose(flota_home(), list(state_dir or []))
    if o.json:
        print_json([c.to_dict() for c in checks])
    elif not checks:
        console.print(f"nothing to check: no coordinator or node state under {flota_home()}")
    else:
        for c in checks:
            console.print(
                f"{c.status:<4}  {c.where}: {c.check}: {c.detail}"
                + (f"\n      fix: {c.fix}" if c.fix else "")
            )
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(EXIT_FAILED)
