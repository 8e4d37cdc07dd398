"""The metering proxy process: ``python -m node_agent.meter``, started by the node for one job.

Its settings arrive as one JSON object on stdin (so the provider keys are in no
environment, argument list or file): ``openai_base``, ``anthropic_base``, ``openai_key``,
``anthropic_key``, ``token`` (the job's), ``budget_usd`` and ``state`` (the figures file).
It listens on 127.0.0.1 (a port of its own), writes its figures to ``state`` at the start,
within 50 ms of every call and when it stops (:func:`figures`), prints the port on stdout,
and serves until SIGTERM (the daemon stops it, and waits, before it reads the figures).
On Linux it makes itself non-dumpable first, so a process of the same user (the job)
cannot read its memory or environment through /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web

from node_agent.meter import prices as price_map
from node_agent.meter.proxy import Upstream, make_app
from node_agent.meter.usage import Ledger

_PR_SET_DUMPABLE = 4
_WRITE_AFTER_S = 0.05  # the figures file, at most this late (and exact once the proxy stops)


def figures(ledger: Ledger, port: int) -> dict[str, Any]:
    """What the state file says: the proxy's address and the job's counts."""
    unpriced = sorted(ledger.unpriced)
    note = f"no price in litellm's map for {', '.join(unpriced)}: tokens counted, cost 0" if unpriced else ""
    return {
        "pid": os.getpid(),
        "create_time": psutil.Process().create_time(),
        "port": port,
        "calls": ledger.calls,
        "refused": ledger.refused,
        "tokens_in": ledger.tokens_in,
        "tokens_out": ledger.tokens_out,
        "cost_usd": ledger.spent,
        "priced": not unpriced,
        "note": note,
        "budget_usd": ledger.budget_usd,
        "refusal": ledger.refusal,
    }


def _write(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".meter.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _not_dumpable() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


async def serve(settings: dict[str, Any]) -> None:
    state = Path(settings["state"])
    ledger = Ledger(float(settings.get("budget_usd") or 0.0))
    upstream = Upstream(
        str(settings["openai_base"]),
        str(settings["anthropic_base"]),
        str(settings.get("openai_key") or ""),
        str(settings.get("anthropic_key") or ""),
    )
    port = 0
    loop = asyncio.get_running_loop()
    due: list[asyncio.TimerHandle] = []

    def write() -> None:
        due.clear()
        _write(state, figures(ledger, port))

    def changed() -> None:  # written soon after, off the call's path; and at the end
        if not due:
            due.append(loop.call_later(_WRITE_AFTER_S, write))

    app = make_app(upstream, str(settings["token"]), ledger, price_map.load(), changed)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    port = int(server.sockets[0].getsockname()[1])
    _write(state, figures(ledger, port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(port, flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the daemon has read the port; it may be gone later
    await stop.wait()
    await runner.cleanup()
    _write(state, figures(ledger, port))


def main() -> int:
    _not_dumpable()
    try:
        settings = json.loads(sys.stdin.readline())
        if not isinstance(settings, dict) or not settings.get("token") or not settings.get("state"):
            raise ValueError("settings must be a JSON object with a token and a state file")
    except ValueError as exc:
        print(f"flota meter: bad settings on stdin: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
