"""`flota dashboard` serving: the coordinator's client, the feed, the web application,
one socket, until SIGINT or SIGTERM (then everything is closed, exit 0). The page's URL,
with its access token, is printed once listening (with --json, one line
{event: "ready", url, pid, port, https})."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import webbrowser

from aiohttp import web

from cli.client import CliError
from cli.dashboard.api import Api
from cli.dashboard.app import make_app
from cli.dashboard.auth import Access
from cli.dashboard.command import Plan
from cli.dashboard.coord import Coordinator
from cli.dashboard.diff import Diffs
from cli.dashboard.feed import Feed
from protos.entry import bind_reason, lan_address

__all__ = ["serve"]


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
    return lan_address()


def _open(url: str) -> None:
    """The page in the user's browser ($BROWSER is honoured), in a thread of its own: a
    browser may stay in the foreground until it is closed, and must not hold up serving or
    the dashboard's exit."""
    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        print(
            "flota dashboard: no browser to open the page in (set $BROWSER); open the URL it printed",
            file=sys.stderr,
            flush=True,
        )


async def serve(plan: Plan, address: str | None, open_page: bool, as_json: bool) -> None:
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
            threading.Thread(target=_open, args=(url,), name="open-browser", daemon=True).start()
        await stop.wait()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await runner.cleanup()
        await coordinator.close()
        diffs.close()
