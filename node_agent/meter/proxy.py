"""The metering proxy's web application (aiohttp): the OpenAI and Anthropic routes in
front of one job's provider, its token checked, every call counted (:mod:`.usage`).

Routes (the job's base URLs point here):

- ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/responses``, ``/v1/embeddings``:
  metered, to the OpenAI-compatible upstream (``.../v1``);
- ``POST /v1/messages``: metered, to the Anthropic upstream; ``/v1/messages/count_tokens``
  and ``GET /v1/models``: passed on, free;
- anything else: 404, in the API's error format.

A streamed reply (SSE) passes through event by event; its usage is read from the events
(for OpenAI's chat and completions the proxy asks for ``stream_options.include_usage``,
and drops the usage-only chunk again if the client had not asked for it). A refused call
gets HTTP 402 in the API's format (OpenAI: ``insufficient_quota``; Anthropic:
``billing_error``), which no provider SDK retries.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from node_agent.meter.prices import Price, lookup
from node_agent.meter.usage import Ledger, Usage, merge, plan, usage_of

__all__ = ["Upstream", "make_app"]

_METERED = {
    "/v1/chat/completions": "openai",
    "/v1/completions": "openai",
    "/v1/embeddings": "openai",
    "/v1/responses": "responses",
    "/v1/messages": "anthropic",
}
_FREE = {("POST", "/v1/messages/count_tokens"): "anthropic", ("GET", "/v1/models"): "openai"}
# Request headers passed on: what the APIs read, never the client's credentials.
_PASSED = ("content-type", "accept", "anthropic-version", "anthropic-beta", "openai-beta", "user-agent")
_REPLY_DROPPED = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection"})


@dataclass(frozen=True)
class Upstream:
    """Where the job's calls really go, and with which keys ("" : none)."""

    openai_base: str  # ends in /v1 as OpenAI's does: https://api.openai.com/v1
    anthropic_base: str  # without /v1: https://api.anthropic.com
    openai_key: str = ""
    anthropic_key: str = ""


def _error(api: str, status: int, message: str, kind: str) -> web.Response:
    if api == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": kind, "code": kind, "param": None}}
    return web.json_response(body, status=status)


def _refused(api: str, line: str) -> web.Response:
    return _error(api, 402, line, "billing_error" if api == "anthropic" else "insufficient_quota")


def make_app(
    upstream: Upstream,
    token: str,
    ledger: Ledger,
    prices: Mapping[str, Price],
    on_change: Callable[[], None],
) -> web.Application:
    """The application; ``on_change`` is called after each call is refused or settled."""
    session: dict[str, aiohttp.ClientSession] = {}

    async def start(app: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        session["s"] = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def close(app: web.Application) -> None:
        await session["s"].close()

    def url_and_headers(api: str, request: web.Request) -> tuple[str, dict[str, str]]:
        headers = {k: v for k in _PASSED if (v := request.headers.get(k))}
        headers["accept-encoding"] = "identity"  # streams are read as they pass
        if api == "anthropic":
            url = upstream.anthropic_base.rstrip("/") + request.path
            headers.setdefault("anthropic-version", "2023-06-01")
            if upstream.anthropic_key:
                headers["x-api-key"] = upstream.anthropic_key
        else:
            url = upstream.openai_base.rstrip("/") + request.path.removeprefix("/v1")
            if upstream.openai_key:
                headers["authorization"] = f"Bearer {upstream.openai_key}"
        return url + (f"?{request.query_string}" if request.query_string else ""), headers

    def authorized(request: web.Request) -> bool:
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        return hmac.compare_digest(given.strip().encode(), token.encode())

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        api = _METERED.get(path) if request.method == "POST" else None
        free = _FREE.get((request.method, path))
        kind = api or free or ("anthropic" if path.startswith("/v1/messages") else "openai")
        if api is None and free is None:
            return _error(
                kind, 404, f"flota meter: no route {request.method} {request.path}", "not_found_error"
            )
        if not authorized(request):
            return _error(kind, 401, "flota meter: wrong token for this job's proxy", "authentication_error")
        if api is None:
            return await _forward(request, kind, await request.read())
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(api, 400, "flota meter: the request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(
                api, 400, "flota meter: the request body is not a JSON object", "invalid_request_error"
            )
        model = str(body.get("model") or "")
        price = lookup(prices, model)
        decided = plan(ledger, body, len(raw), price, api)
        if decided.refusal:
            on_change()
            return _refused(api, decided.refusal)
        sent = dict(decided.body)
        hide_usage = False
        if sent.get("stream") and api == "openai" and path != "/v1/embeddings":
            options = sent.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            hide_usage = not options.get("include_usage")
            sent["stream_options"] = {**options, "include_usage": True}
        settled = False

        def done(usage: Usage | None) -> None:  # before the client has the reply's end
            nonlocal settled
            if not settled:
                settled = True
                ledger.settle(decided.estimate, usage, price, model)
                on_change()

        try:
            return await _forward(request, api, json.dumps(sent).encode(), done, hide_usage)
        finally:
            done(None)  # it failed on the way: what it may have cost is spent

    async def _forward(
        request: web.Request,
        api: str,
        data: bytes,
        done: Callable[[Usage | None], None] | None = None,
        hide_usage: bool = False,
    ) -> web.StreamResponse:
        url, headers = url_and_headers(api, request)
        try:
            upstream_reply = await session["s"].request(
                request.method, url, data=data or None, headers=headers
            )
        except (aiohttp.ClientError, OSError) as exc:
            where = url.split("?")[0]
            if done is not None:
                done(Usage())  # it never reached the provider: it cost nothing
            return _error(api, 502, f"flota meter: cannot reach the provider at {where}: {exc}", "api_error")
        async with upstream_reply as reply:
            anthropic = api == "anthropic"
            content_type = reply.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                payload = await reply.read()
                if done is not None:
                    done(_body_usage(payload, anthropic) if reply.status < 300 else Usage())
                return web.Response(body=payload, status=reply.status, headers=_reply_headers(reply))
            out = web.StreamResponse(status=reply.status, headers=_reply_headers(reply))
            await out.prepare(request)
            usage = await _pass_events(reply, out.write, done is not None, anthropic, hide_usage)
            if done is not None:
                done(usage)
            await out.write_eof()
            return out

    app = web.Application(client_max_size=64 << 20)
    app.on_startup.append(start)
    app.on_cleanup.append(close)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _reply_headers(reply: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k.lower() not in _REPLY_DROPPED}


def _body_usage(payload: bytes, anthropic: bool) -> Usage | None:
    try:
        return usage_of(json.loads(payload), anthropic)
    except ValueError:
        return None


async def _pass_events(
    reply: aiohttp.ClientResponse,
    write: Callable[[bytes], Awaitable[None]],
    metered: bool,
    anthropic: bool,
    hide_usage: bool,
) -> Usage | None:
    """Pass a stream on event by event (an event ends at a blank line); the usage its
    events reported (a failed reply's: none, so nothing)."""
    usage: Usage | None = Usage() if reply.status >= 300 else None
    pending = b""

    async def one(event: bytes, end: bytes) -> None:
        nonlocal usage
        said, keep = _read_event(event, anthropic, hide_usage) if metered else (None, True)
        usage = merge(usage, said)
        if keep:
            await write(event + end)

    async for chunk in reply.content.iter_any():
        pending += chunk.replace(b"\r\n", b"\n")
        *events, pending = pending.split(b"\n\n")
        for event in events:
            await one(event, b"\n\n")
    if pending.strip():
        await one(pending, b"")
    return usage


def _read_event(event: bytes, anthropic: bool, hide_usage: bool) -> tuple[Usage | None, bool]:
    """The event's usage, and False for the usage-only chunk the client did not ask for."""
    data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
    if not data or data == b"[DONE]":
        return None, True
    try:
        obj = json.loads(data)
    except ValueError:
        return None, True
    usage = usage_of(obj, anthropic)
    return usage, not (
        hide_usage and usage is not None and isinstance(obj, dict) and obj.get("choices") == []
    )
