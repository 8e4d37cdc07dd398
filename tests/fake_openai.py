"""A fake OpenAI-compatible server on 127.0.0.1, for the llm agent's and the agent CLIs' tests.

It replays a script: each POST to ``/v1/chat/completions`` (or ``/v1/responses``, the
Responses API Codex speaks) takes the next :class:`Reply` (a tool call, text, or a raw,
possibly malformed, payload), after the reply's delay. When the script runs out it repeats
``default`` (or answers 500 when there is none). Every request body is recorded in
:attr:`FakeOpenAI.requests` (messages, tools, model), its path in :attr:`FakeOpenAI.paths`,
and the most requests it served at once in :attr:`FakeOpenAI.peak`. ``total_slots`` makes it
answer llama.cpp's ``GET /props`` (and ``/slots``) with that capacity; :meth:`FakeOpenAI.hold`
keeps every reply back until :meth:`FakeOpenAI.release`.

    with FakeOpenAI([call("write_file", path="a.txt", content="hi"), call("finish", summary="ok")]) as srv:
        env["FLOTA_LLM_API_BASE"] = srv.base_url

The server itself is shared: :class:`Route` is one API's endpoint (which paths, the model a
request names, how a scripted body goes on the wire, streamed as SSE when asked), and
tests/fake_anthropic.py and tests/fake_gemini.py are this server with their own routes.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["FakeOpenAI", "Reply", "Route", "call", "calls", "raw", "response_call", "response_text", "text"]

_ids = itertools.count(1)


@dataclass
class Reply:
    """One scripted answer: ``body`` is sent as JSON (or as is, when bytes)."""

    body: dict[str, Any] | bytes
    status: int = 200
    delay_s: float = 0.0


def _tool_call(name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": f"call_{next(_ids)}", "type": "function", "function": {"name": name, "arguments": args}}


def _completion(message: dict[str, Any], usage: tuple[int, int] | None, finish_reason: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake",  # replaced by the requested model when served
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return body


def calls(
    *tool_calls: tuple[str, dict[str, Any] | str],
    content: str | None = None,
    usage: tuple[int, int] | None = (10, 5),
    delay_s: float = 0.0,
) -> Reply:
    """A reply with several tool calls: ``calls(("read_file", {"path": "a"}), ...)``;
    arguments given as a string are sent verbatim (invalid JSON included)."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "tool_calls": [_tool_call(n, a) for n, a in tool_calls],
    }
    return Reply(_completion(message, usage, "tool_calls"), delay_s=delay_s)


def call(
    name: str, /, *, usage: tuple[int, int] | None = (10, 5), delay_s: float = 0.0, **arguments: Any
) -> Reply:
    """A reply with one tool call."""
    return calls((name, arguments), usage=usage, delay_s=delay_s)


def text(content: str, usage: tuple[int, int] | None = (10, 5), delay_s: float = 0.0) -> Reply:
    """A plain text reply, no tool call."""
    message = {"role": "assistant", "content": content}
    return Reply(_completion(message, usage, "stop"), delay_s=delay_s)


def raw(body: dict[str, Any] | bytes, status: int = 200, delay_s: float = 0.0) -> Reply:
    """Anything at all, e.g. ``raw({"id": "x", "choices": []})``."""
    return Reply(body, status=status, delay_s=delay_s)


def _response(output: list[dict[str, Any]], usage: tuple[int, int]) -> dict[str, Any]:
    return {
        "id": f"resp_{next(_ids)}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": "fake",
        "output": output,
        "usage": {
            "input_tokens": usage[0],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage[1],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": sum(usage),
        },
    }


def response_call(name: str, /, *, usage: tuple[int, int] = (10, 5), **arguments: Any) -> Reply:
    """A Responses API reply with one function call (Codex's tools: ``exec_command`` ...)."""
    n = next(_ids)
    item = {
        "type": "function_call",
        "id": f"fc_{n}",
        "call_id": f"call_{n}",
        "name": name,
        "arguments": json.dumps(arguments),
        "status": "completed",
    }
    return Reply(_response([item], usage))


def response_text(content: str, usage: tuple[int, int] = (10, 5)) -> Reply:
    """A Responses API reply that is a final assistant message."""
    item = {
        "type": "message",
        "id": f"msg_{next(_ids)}",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": content, "annotations": []}],
    }
    return Reply(_response([item], usage))


Events = list[tuple[str, dict[str, Any]]]  # a streamed reply: (SSE event name or "", data)


@dataclass(frozen=True)
class Route:
    """One endpoint: the POST paths it answers, the model a request names, and how a
    scripted 200 body is sent: as JSON, or as SSE events (a list) when the request streams."""

    matches: Callable[[str], bool]
    model: Callable[[str, dict[str, Any]], str]
    render: Callable[[dict[str, Any], dict[str, Any], str], dict[str, Any] | Events]


def _chat(body: dict[str, Any], request: dict[str, Any], model: str) -> dict[str, Any]:
    return {**body, "model": model} if body.get("object") == "chat.completion" else body


def _responses(body: dict[str, Any], request: dict[str, Any], model: str) -> dict[str, Any] | Events:
    if body.get("object") != "response":
        return body
    done = {**body, "model": model}
    if not request.get("stream"):
        return done
    events: Events = [("response.created", {"response": {**done, "status": "in_progress", "output": []}})]
    for index, item in enumerate(done["output"]):
        events.append(("response.output_item.added", {"output_index": index, "item": item}))
        if item["type"] == "message":
            delta = {"item_id": item["id"], "output_index": index, "content_index": 0}
            events.append(("response.output_text.delta", {**delta, "delta": item["content"][0]["text"]}))
        events.append(("response.output_item.done", {"output_index": index, "item": item}))
    events.append(("response.completed", {"response": done}))
    return [(name, {"type": name, **data}) for name, data in events]


def _body_model(path: str, request: dict[str, Any]) -> str:
    return str(request.get("model", "fake"))


OPENAI_ROUTES = (
    Route(lambda p: p.endswith("/chat/completions"), _body_model, _chat),
    Route(lambda p: p.endswith("/responses"), _body_model, _responses),
)


@dataclass
class _State:
    script: list[Reply]
    default: Reply | None
    by_model: dict[str, list[Reply]] = field(default_factory=dict)  # scripts per requested model
    routes: Sequence[Route] = OPENAI_ROUTES
    requests: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # each request's Authorization header
    paths: list[str] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    total_slots: int = 0  # 0: no /props or /slots (not llama.cpp)
    serving: int = 0
    peak: int = 0
    gate: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client expects
    # Headers and body leave in one write, with Nagle off: otherwise a delayed ACK adds
    # ~40 ms to every reply and the agent's own overhead cannot be measured.
    wbufsize = 1 << 16
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        slots = self.server.state.total_slots
        path = self.path.rstrip("/")
        if path.endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        elif slots and path == "/props":
            self._send(200, {"total_slots": slots, "default_generation_settings": {"n_ctx": 2048}})
        elif slots and path == "/slots":
            self._send(200, [{"id": i, "is_processing": False} for i in range(slots)])
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        state = self.server.state
        path = self.path.split("?")[0].rstrip("/")
        route = next((r for r in state.routes if r.matches(path)), None)
        if route is None:
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            request = json.loads(data)
        except ValueError:
            self._send(400, {"error": {"message": "invalid JSON"}})
            return
        model = route.model(path, request)
        with state.lock:
            state.requests.append(request)
            state.keys.append(self.headers.get("Authorization", ""))
            state.paths.append(self.path)
            state.request_times.append(time.monotonic())
            script = state.by_model.get(model, state.script)
            reply = script.pop(0) if script else state.default
            state.serving += 1
            state.peak = max(state.peak, state.serving)
        try:
            self._answer(request, reply, route, model)
        finally:
            with state.lock:
                state.serving -= 1

    def _answer(self, request: dict[str, Any], reply: Reply | None, route: Route, model: str) -> None:
        self.server.state.gate.wait()
        if reply is None:
            self._send(500, {"error": {"message": "fake server: script exhausted", "type": "server_error"}})
            return
        if reply.delay_s:
            time.sleep(reply.delay_s)
        body = reply.body
        if isinstance(body, dict) and reply.status == 200:
            rendered = route.render(body, request, model)
            if isinstance(rendered, list):
                self._stream(rendered)
                return
            body = rendered
        self._send(reply.status, body)

    def _stream(self, events: Events) -> None:
        chunks = [
            (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n" for name, data in events
        ]
        payload = "".join(chunks).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, body: object) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class FakeOpenAI:
    """The server; a context manager. ``base_url`` is what FLOTA_LLM_API_BASE takes."""

    routes: Sequence[Route] = OPENAI_ROUTES
    url_path = "/v1"  # what base_url ends with: the part of the path the client does not add

    def __init__(
        self,
        script: Iterable[Reply] = (),
        default: Reply | None = None,
        by_model: dict[str, list[Reply]] | None = None,
        total_slots: int = 0,
    ) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = _State(
            list(script), default, dict(by_model or {}), self.routes, total_slots=total_slots
        )
        self._server.state.gate.set()
        name = type(self).__name__
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.url_path}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._server.state.lock:
            return list(self._server.state.requests)

    @property
    def keys(self) -> list[str]:
        """The Authorization header of each request, in order."""
        with self._server.state.lock:
            return list(self._server.state.keys)

    @property
    def paths(self) -> list[str]:
        with self._server.state.lock:
            return list(self._server.state.paths)

    @property
    def request_times(self) -> list[float]:
        with self._server.state.lock:
            return list(self._server.state.request_times)

    @property
    def peak(self) -> int:
        """The most requests it was serving at one time."""
        with self._server.state.lock:
            return self._server.state.peak

    def hold(self) -> None:
        """Keep every reply back (requests are still recorded) until :meth:`release`."""
        self._server.state.gate.clear()

    def release(self) -> None:
        self._server.state.gate.set()

    def add(self, *replies: Reply) -> None:
        with self._server.state.lock:
            self._server.state.script.extend(replies)

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
