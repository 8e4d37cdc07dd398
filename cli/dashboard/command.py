"""`flota dashboard`: the fleet's live web page, served from this machine until Ctrl-C.

The address is checked before anything starts: an IP literal (or localhost); a
non-loopback one only with --public, and then only over HTTPS. The page's URL, with its
access token, is printed once listening (with --json, one line {event: "ready", ...}).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import ssl
import webbrowser
from dataclasses import dataclass
from typing import Annotated

import psutil
import typer
from aiohttp import web

from cli.client import CliError
from cli.dashboard.api import Api
from cli.dashboard.app import make_app
from cli.dashboard.auth import Access
from cli.dashboard.coord import Coordinator
from cli.dashboard.diff import Diffs
from cli.dashboard.feed import Feed
from cli.dashboard.tls import server_context
from cli.options import check_address, options
from protos.contract import parse_hostport
from protos.entry import bind_reason

__all__ = ["DEFAULT_PORT", "dashboard"]

DEFAULT_PORT = 7375


@dataclass(frozen=True, slots=True)
class _Plan:
    host: str
    port: int
    loopback: bool
    tls: ssl.SSLContext | None
    tls_note: str


def _plan(listen: str, public: bool, cert: str | None, key: str | None) -> _Plan:
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
    tls, note = server_context(cert, key, host) if public or cert else (None, "")
    return _Plan(host, port, ip.is_loopback, tls, note)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]" if ":" in host else host
        raise CliError(
            f"cannot listen on {shown}:{port}: {bind_reason(exc) or exc.strerror or exc}"
        ) from None
    sock.setblocking(False)
    return sock


def _shown_host(host: str) -> str:
    """The address to print for a wildcard listener: this machine's first LAN address."""
    if not ipaddress.ip_address(host).is_unspecified:
        return host
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            try:
                ip = ipaddress.ip_address(a.address)
            except ValueError:
                continue
            if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
                return a.address
    return "127.0.0.1"


async def _serve(plan: _Plan, address: str | None, open_page: bool, as_json: bool) -> None:
    coordinator = Coordinator(address)  # no admin credentials: said before anything listens
    sock = _bind(plan.host, plan.port)
    port = sock.getsockname()[1]
    access = Access(port, plan.tls is not None, plan.host if plan.loopback else None)
    feed, diffs = Feed(coordinator), Diffs()
    app = make_app(access, Api(coordinator, feed, diffs, access.csrf))
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reading = asyncio.create_task(feed.run())
    try:
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=plan.tls).start()
        url = access.url(_shown_host(plan.host))
        if as_json:
            ready = {
                "event": "ready",
                "url": url,
                "pid": os.getpid(),
                "port": port,
                "https": plan.tls is not None,
            }
            print(json.dumps(ready), flush=True)
        else:
            print(f"flota dashboard: {url}", flush=True)
            if plan.tls_note:
                print(f"  {plan.tls_note}", flush=True)
            print(f"  the fleet of the coordinator at {coordinator.address}; Ctrl-C stops it", flush=True)
        if open_page:
            await loop.run_in_executor(None, webbrowser.open, url)
        await stop.wait()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await runner.cleanup()
        await coordinator.close()
        diffs.close()


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
    asyncio.run(_serve(plan, o.address(), open_page, o.json))
