"""The dashboard's JSON and event-stream endpoints. Each one is a coordinator call, the
CLI's own (cli/dashboard/coord.py), its reply in the shapes of `flota --json`
(docs/cli.md, "JSON"); an action answers with the line the CLI would print, too.

A failed call answers {"error": "flota: <the CLI's line>"}: 503 when the coordinator
cannot be reached, 400 for a refused request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cli import __version__
from cli.client import EXIT_UNAVAILABLE, CliError
from cli.dashboard.coord import Coordinator
from cli.dashboard.diff import Diffs
from cli.dashboard.feed import Feed
from cli.render import compare_rows, count, to_dict
from protos.flota.v1 import coordinator_pb2 as pb

__all__ = ["Api"]

CLOCK_S = 5.0  # how often an idle page hears the dashboard's time (it shows "for N s")
_MAX_ID = 200
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _failed(exc: CliError) -> web.Response:
    status = 503 if exc.code == EXIT_UNAVAILABLE else 400
    return web.json_response({"error": f"flota: {exc}"}, status=status)


def _sse(*messages: str) -> bytes:
    return "".join(f"data: {m}\n\n" for m in messages).encode()


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID:
        raise CliError(f"{key} must be a non-empty string")
    return value


Call = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answers(handler: Callable[[web.Request], Awaitable[dict[str, Any]]]) -> Call:
    """A handler's dict as JSON; a CliError as one line."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return web.json_response(await handler(request))
        except CliError as exc:
            return _failed(exc)

    return wrapped


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise CliError("actions take a JSON body (Content-Type: application/json)")
    try:
        body = json.loads(await request.text())
    except ValueError:
        raise CliError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise CliError("the body must be a JSON object")
    return body


class Api:
    def __init__(self, coordinator: Coordinator, feed: Feed, diffs: Diffs, csrf: str) -> None:
        self.coordinator, self.feed, self.diffs, self.csrf = coordinator, feed, diffs, csrf

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/api/session", _answers(self.session)),
            web.get("/api/events", self.events),
            web.get("/api/runs/{run}", _answers(self.run)),
            web.get("/api/jobs/{job}", _answers(self.job)),
            web.get("/api/jobs/{job}/logs", self.logs),
            web.get("/api/jobs/{job}/diff", _answers(self.diff)),
            web.post("/api/cancel", _answers(self.cancel)),
            web.post("/api/retry", _answers(self.retry)),
            web.post("/api/drain", _answers(self.drain)),
            web.post("/api/cleanup", self.cleanup),
        ]

    # --- reads ----------------------------------------------------------------------------

    async def session(self, request: web.Request) -> dict[str, Any]:
        return {"csrf": self.csrf, "coordinator": self.coordinator.address, "version": __version__}

    async def run(self, request: web.Request) -> dict[str, Any]:
        run = await self.coordinator.get_run(request.match_info["run"][:_MAX_ID])
        competition = len(run.jobs) > 1 and len({j.model for j in run.jobs}) > 1
        return {"run": to_dict(run), "compare": compare_rows(run) if competition else []}

    async def job(self, request: web.Request) -> dict[str, Any]:
        job = await self.coordinator.get_job(request.match_info["job"][:_MAX_ID])
        run = await self.coordinator.get_run(job.run_id)
        return {"job": to_dict(job), "repo_url": run.repo_url}

    async def diff(self, request: web.Request) -> dict[str, Any]:
        job = await self.coordinator.get_job(request.match_info["job"][:_MAX_ID])
        run = await self.coordinator.get_run(job.run_id)
        return await self.diffs.of(job, run.repo_url)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The feed, as server-sent events: a snapshot, then each message as it comes."""
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        subscriber = self.feed.subscribe()
        clock_at = 0.0
        try:
            while True:
                got = await subscriber.take(CLOCK_S)
                messages = self.feed.snapshot() if got is None else got
                if time.monotonic() - clock_at >= CLOCK_S:
                    clock_at = time.monotonic()
                    messages.append(json.dumps({"type": "clock", "at": time.time()}))
                if messages:
                    await response.write(_sse(*messages))
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self.feed.unsubscribe(subscriber)
        return response

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """A job's output, every attempt, then each line as it comes; "end" when the job
        has ended (the page then stops listening), "error" when the call failed."""
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        try:
            try:
                async for chunk in self.coordinator.stream_logs(request.match_info["job"][:_MAX_ID]):
                    data = {"type": "lines", "attempt_id": chunk.attempt_id, "lines": list(chunk.lines)}
                    await response.write(_sse(json.dumps(data)))
                await response.write(_sse(json.dumps({"type": "end"})))
            except CliError as exc:
                await response.write(_sse(json.dumps({"type": "error", "error": f"flota: {exc}"})))
        except ConnectionResetError:
            pass
        return response

    # --- actions --------------------------------------------------------------------------

    async def cancel(self, request: web.Request) -> dict[str, Any]:
        reply = await self.coordinator.cancel(_text(await _body(request), "id"))
        said = (
            f"cancelled {count(len(reply.cancelled), 'job')}: {' '.join(reply.cancelled)}"
            if reply.cancelled
            else "nothing to cancel: it has already ended"
        )
        return {**to_dict(reply), "message": said}

    async def retry(self, request: web.Request) -> dict[str, Any]:
        body = await _body(request)
        reply = await self.coordinator.retry(_text(body, "id"), body.get("failed") is True)
        said = (
            f"run {reply.run.id}: {count(len(reply.retried), 'job')}: {' '.join(reply.retried)} queued again"
        )
        return {**to_dict(reply), "message": said}

    async def drain(self, request: web.Request) -> dict[str, Any]:
        body = await _body(request)
        undo = body.get("undo") is True
        status = await self.coordinator.drain_node(_text(body, "node"), undo)
        name, running = status.info.name or status.info.id, status.info.running
        said = (
            f"node {name}: takes new jobs again ({status.state})"
            if undo
            else f"node {name}: draining; no new jobs, {count(running, 'running job')} will finish"
        )
        return {"node": to_dict(status), "message": said}

    async def cleanup(self, request: web.Request) -> web.StreamResponse:
        """NDJSON as the cleanup goes: {"type": "progress", what, done, total} for each step
        the coordinator reports, then {"type": "done", ..., message} (or {"type": "error"}).
        A request refused before any step answers as the other actions do."""
        try:
            events = self.coordinator.cleanup(_text(await _body(request), "run"))
            first = await anext(events)
        except CliError as exc:
            return _failed(exc)
        except StopAsyncIteration:
            first = None
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        try:
            try:
                event = first
                while event is not None:
                    await response.write((json.dumps(_cleanup_line(event)) + "\n").encode())
                    if event.HasField("done"):
                        break
                    event = await anext(events, None)
                else:
                    raise CliError(
                        f"the coordinator at {self.coordinator.address} ended Cleanup without its reply"
                    )
            except CliError as exc:
                await response.write(
                    (json.dumps({"type": "error", "error": f"flota: {exc}"}) + "\n").encode()
                )
        except ConnectionResetError:
            pass  # the page went away; the cleanup goes on at the coordinator
        return response


def _cleanup_line(event: pb.CleanupEvent) -> dict[str, Any]:
    if not event.HasField("done"):
        step = event.progress
        return {"type": "progress", "what": step.what, "done": step.done, "total": step.total}
    reply = event.done
    said = f"removed {count(reply.worktrees_removed, 'worktree')}; branches kept"
    if reply.nodes_unreachable:
        said += f"; unreachable, not cleaned: {', '.join(reply.nodes_unreachable)}"
    return {"type": "done", **to_dict(reply), "message": said}
