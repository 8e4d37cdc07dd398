"""What `flota node add` did, on both sides.

On the host, `~/.local/share/flota/install.json` (the manifest): written after each step of
an install, so that `uninstall` (or an `add` that fails half way) undoes exactly that:

    {"format": 1, "complete": true, "version": "0.1.0", "build": "<source hash>",
     "root": ".../.local/share/flota", "python": "/usr/bin/python3",
     "created": [directories add made outside the root, parents first],
     "node": {"id": "...", "name": "..."}, "coordinator": "HOST:PORT",
     "service": {"kind": "none|systemd|launchd|system-systemd|system-launchd", "asked": "...",
                 "file": "unit or plist path", "linger": true if add enabled linger,
                 "created": [directories add made for the unit file]},
     "extras": ["llm"], "online": false,
     "versions": ["0.1.0", "0.2.0"] (each versions/<v> dir there; `flota node upgrade` adds),
     "upgrades": [{"from": "0.1.0", "to": "0.2.0", "at": <unix time>,
                   "state": "upgraded|rolled back"}]}

On the workstation, `<FLOTA_HOME>/installs/<name>.json`: how to reach the node's host
again (`uninstall NAME`): its ssh target and the options that pinned its key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cli.client import CliError
from protos.contract import flota_home
from protos.limits import NAME_RE

__all__ = ["FORMAT", "delete_record", "encode", "load_record", "records", "save_record"]

FORMAT = 1


def encode(manifest: dict[str, Any]) -> bytes:
    """One line of JSON (the preflight probe reads it back with `cat`)."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _records() -> Path:
    return flota_home() / "installs"


def save_record(name: str, record: dict[str, Any]) -> None:
    path = _records() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_record(name: str) -> dict[str, Any]:
    path = _records() / f"{name}.json"
    if not NAME_RE.match(name) or not path.is_file():
        raise CliError(
            f"no node named {name} was installed from this machine ({_records()}): pass its USER@HOST instead"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CliError(f"cannot read {path}: not a JSON object")
    return data


def delete_record(name: str) -> None:
    (_records() / f"{name}.json").unlink(missing_ok=True)


def records() -> list[str]:
    """The names of the nodes installed from this machine."""
    found = sorted(p.stem for p in _records().glob("*.json")) if _records().is_dir() else []
    return [n for n in found if NAME_RE.match(n)]
