"""Secrets jobs ask for by name (`flota run --secret NAME`).

A secret's value comes from the coordinator's keyring (`<state>/secrets/<NAME>`, one
owner-only file each, set with `flota secret set`) or, failing that, from the
coordinator's own environment. Only names are stored with a job; values are looked up
when an attempt is dispatched, travel to the node over mTLS in `JobSpec.secrets`, and
are redacted (`redact`) from every log line and result the coordinator keeps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from coordinator.errors import InvalidRequest, NotFound
from protos.contract import redact
from protos.limits import ENV_KEY_RE

__all__ = ["Keyring", "redact"]

MAX_SECRET_BYTES = 64 * 1024
# Shorter values would redact ordinary words; such a secret is refused instead.
MIN_SECRET_CHARS = 4


class Keyring:
    def __init__(self, root: Path, environ: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.environ = os.environ if environ is None else environ
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)

    @staticmethod
    def check_name(name: str) -> str:
        if not ENV_KEY_RE.match(name):
            raise InvalidRequest(f"invalid secret name {name!r} (an environment variable name)")
        return name

    def set(self, name: str, value: str) -> None:
        self.check_name(name)
        if len(value.encode()) > MAX_SECRET_BYTES or "\0" in value:
            raise InvalidRequest("a secret is at most 64 KiB, without NUL")
        if len(value.strip()) < MIN_SECRET_CHARS:
            raise InvalidRequest(f"a secret needs at least {MIN_SECRET_CHARS} characters")
        tmp = self.root / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        os.replace(tmp, self.root / name)

    def delete(self, name: str) -> None:
        try:
            (self.root / self.check_name(name)).unlink()
        except FileNotFoundError:
            raise NotFound(f"no secret {name!r} in the keyring") from None

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if ENV_KEY_RE.match(p.name))

    def resolve(self, name: str) -> str | None:
        """The value: the keyring first, then the coordinator's environment; None if neither."""
        try:
            return (self.root / self.check_name(name)).read_text()
        except FileNotFoundError:
            value = self.environ.get(name)
            return value if value and len(value.strip()) >= MIN_SECRET_CHARS else None

    def values(self, names: tuple[str, ...] | list[str]) -> dict[str, str]:
        """name -> value for every name that resolves."""
        out = {}
        for name in names:
            value = self.resolve(name)
            if value is not None:
                out[name] = value
        return out
