"""The global options (`flota --json --coordinator HOST:PORT ...`) as every command reads them.

`cli/main.py` declares the options and stores an `Options` on the root context; a command
takes it back with `options(ctx)`. Kept apart from main.py so the command modules need not
import the app that registers them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

import typer

from cli.client import Client, CliError
from protos.contract import parse_hostport

__all__ = ["Options", "check_address", "json_flag", "options"]

# RFC 1123 host names: what a resolver could ever find. Anything else is a typo, refused
# here rather than sent to DNS (and reported as "cannot reach" after a resolver timeout).
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def _host_ok(host: str) -> bool:
    if ":" in host:
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    labels = host.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels):  # looks like IPv4: must be one
        try:
            return ipaddress.ip_address(host).version == 4
        except ValueError:
            return False
    return len(host) <= 253 and all(_LABEL.match(label) for label in labels)


def check_address(value: str, what: str, default_port: int | None = None) -> str:
    """`value` if it is HOST:PORT (a host name, an IPv4 address or [IPv6]), else CliError.
    With `default_port`, HOST and :PORT are accepted too (as the daemons' --listen takes them)."""
    try:
        # -1 is no port at all: parse_hostport refuses it, so the port must be written.
        host, _ = parse_hostport(value, -1 if default_port is None else default_port)
    except ValueError:
        host = ""
    if not _host_ok(host) or (default_port is None and value.strip().startswith(":")):
        raise CliError(f"malformed {what} {value!r} (expected HOST:PORT, e.g. 127.0.0.1:7370)")
    return value


@dataclass
class Options:
    json: bool = False
    coordinator: str | None = None

    def address(self) -> str | None:
        """--coordinator or $FLOTA_COORDINATOR, checked; None: the one the coordinator wrote."""
        if self.coordinator:
            check_address(self.coordinator, "--coordinator")
        elif os.environ.get("FLOTA_COORDINATOR"):
            check_address(os.environ["FLOTA_COORDINATOR"], "$FLOTA_COORDINATOR")
        return self.coordinator

    def client(self) -> Client:
        return Client(self.address())


def options(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Options) else Options()


def json_flag(ctx: typer.Context) -> list[str]:
    """`--json` again for a daemon we exec: it prints its own JSON lines."""
    return ["--json"] if options(ctx).json else []
