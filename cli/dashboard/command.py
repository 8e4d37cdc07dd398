"""`flota dashboard`: the command and its checks. The address is checked before anything
starts: an IP literal (or localhost); a non-loopback one only with --public, and then
only over HTTPS. The server (serve.py, aiohttp and grpc.aio) is imported only when the
command runs, so no other command pays for it.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from cli.client import CliError
from cli.options import check_address, options
from protos.contract import parse_hostport

if TYPE_CHECKING:
    import ssl

__all__ = ["DEFAULT_PORT", "Plan", "dashboard"]

DEFAULT_PORT = 7375


@dataclass(frozen=True, slots=True)
class Plan:
    host: str
    port: int
    loopback: bool
    tls: ssl.SSLContext | None
    tls_note: str


def _plan(listen: str, public: bool, cert: str | None, key: str | None) -> Plan:
    check_address(listen, "--listen", DEFAULT_PORT)
    host, port = parse_hostport(listen, DEFAULT_PORT, default_host="127.0.0.1")
    host = "127.0.0.1" if host == "localhost" else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise CliError(
            f"--listen takes an IP address (127.0.0.1, 0.0.0.0, [::1] ...), not {host!r}"
        ) from None
    if not ip.is_loopback and not public:
        raise CliError(
            f"--listen {listen} is not a loopback address: anyone who reaches it could try the page; "
            "add --public to serve it there over HTTPS (a certificate from the fleet's CA, or --cert/--key)"
        )
    if (cert is None) != (key is None):
        raise CliError("--cert and --key go together")
    if not (public or cert):
        return Plan(host, port, ip.is_loopback, None, "")
    from cli.dashboard.tls import server_context

    tls, note = server_context(cert, key, host)
    return Plan(host, port, ip.is_loopback, tls, note)


def dashboard(
    ctx: typer.Context,
    listen: Annotated[
        str,
        typer.Option(metavar="HOST:PORT", help="Where to serve (port 0 picks a free one)."),
    ] = f"127.0.0.1:{DEFAULT_PORT}",
    open_page: Annotated[bool, typer.Option("--open", help="Open the page in your browser.")] = False,
    public: Annotated[
        bool, typer.Option("--public", help="Allow a non-loopback address; the page is then HTTPS only.")
    ] = False,
    cert: Annotated[
        str | None, typer.Option(metavar="PEM", help="Serve HTTPS with this certificate.")
    ] = None,
    key: Annotated[str | None, typer.Option(metavar="PEM", help="The certificate's private key.")] = None,
) -> None:
    """Serve the fleet's live web dashboard (its URL, with an access token, is printed)."""
    o = options(ctx)
    plan = _plan(listen, public, cert, key)
    address = o.address()
    from cli.dashboard.serve import serve

    asyncio.run(serve(plan, address, open_page, o.json))
