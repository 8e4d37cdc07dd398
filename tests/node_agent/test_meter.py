"""The metering proxy as its own process (``python -m node_agent.meter``, started by the
daemon's ``node_agent.meter.control``) in front of a scripted provider on loopback that
speaks OpenAI's and Anthropic's APIs, streamed and not: what it counts, what it refuses,
and that the provider sees the real key and the client only its token."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from node_agent.meter import control
from node_agent.models import Job, Metered
from tests.fleet import wait_until

pytestmark = pytest.mark.timeout(60)

KEY = "sk-real-provider-key-0123456789"
ANTHROPIC_KEY = "sk-ant-real-key-9876543210"


@dataclass
class Seen:
    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    usage: tuple[int, int] = (1000, 500)


class _Provider(BaseHTTPRequestHandler):
    """OpenAI's chat completions and Anthropic's messages, each as JSON or a stream."""

    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        seen: Seen = self.server.seen
        seen.requests.append((self.path, body, {k.lower(): v for k, v in self.headers.items()}))
        tin, tout = seen.usage
        tout = min(tout, body.get("max_tokens") or tout)  # a limit asked for is kept
        if self.path == "/v1/chat/completions" and not body.get("stream"):
            self._json({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                        "usage": {"prompt_tokens": tin, "completion_tokens": tout}})  # fmt: skip
        elif self.path == "/v1/chat/completions":
            events: list[dict[str, Any]] = [
                {"choices": [{"index": 0, "delta": {"content": w}}]} for w in ("hel", "lo")
            ]
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append({"choices": [], "usage": {"prompt_tokens": tin, "completion_tokens": tout}})
            self._stream([f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"])
        elif self.path == "/v1/messages" and body.get("stream"):
            start = {"type": "message_start", "message": {"usage": {
                "input_tokens": tin, "output_tokens": 1, "cache_read_input_tokens": 100}}}  # fmt: skip
            delta = {"type": "message_delta", "usage": {"output_tokens": tout}}
            self._stream([f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in (start, delta)])
        elif self.path == "/v1/messages":
            self._json({"type": "message", "content": [{"type": "text", "text": "hi"}],
                        "usage": {"input_tokens": tin, "output_tokens": tout}})  # fmt: skip
        else:
            self._json({"error": "no route"}, 404)

    def _json(self, body: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: list[str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in events:
            self.wfile.write(event.encode())
            self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def provider() -> Iterator[tuple[str, Seen]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    server.daemon_threads = True
    server.seen = Seen()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", server.seen  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def start(tmp_path: Path, api_base: str, budget: float) -> control.Meter:
    job = Job(job_id="r.0", run_id="r", attempt_id="r.0.1", budget_usd=budget, api_base=api_base)
    env = {"OPENAI_API_KEY": KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}
    return asyncio.run(control.start(job, tmp_path, env))


@pytest.fixture
def meters() -> Iterator[list[control.Meter]]:
    started: list[control.Meter] = []
    yield started
    for meter in started:
        meter.stop()


def settled(meter: control.Meter) -> Metered:
    """The proxy's figures once it has stopped (it writes them exactly then)."""
    figures, down = asyncio.run(meter.end())
    assert down == ""
    return figures


def written(meter: control.Meter, calls: int) -> Metered:
    """The proxy's figures once its file counts ``calls`` (it writes them within 50 ms)."""
    figures: Metered = wait_until(
        lambda: (f := meter.figures()).calls == calls and f, timeout=10, what="figures"
    )
    return figures


def post(url: str, body: dict[str, Any], token: str) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}", "x-api-key": token}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_openai_calls_are_counted_priced_and_stopped_at_the_budget(
    tmp_path: Path, provider: tuple[str, Seen], meters: list[control.Meter]
) -> None:
    base, seen = provider
    # gpt-4o-mini: $0.15 / $0.60 per million tokens; each call here costs $0.00045.
    meter = start(tmp_path, base, budget=0.0009)
    meters.append(meter)
    chat = f"{meter.openai_url}/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}
    assert post(chat, body, meter.token)[0] == 200
    assert post(chat, body, meter.token)[0] == 200
    status, reply = post(chat, body, meter.token)
    assert status == 402
    error = json.loads(reply)["error"]
    assert error["type"] == "insufficient_quota" and "budget $0.0009 reached" in error["message"]
    assert len(seen.requests) == 2  # the refused call never reached the provider
    # The provider saw the real key, never the job's token; the client never the key.
    assert all(h["authorization"] == f"Bearer {KEY}" for _, _, h in seen.requests)
    assert KEY not in reply.decode() and meter.token not in json.dumps(seen.requests)
    figures = settled(meter)
    assert (figures.calls, figures.refused, figures.tokens_in, figures.tokens_out) == (2, 1, 2000, 1000)
    assert figures.cost_usd == pytest.approx(2 * (1000 * 0.15e-6 + 500 * 0.6e-6))
    assert figures.priced and "budget" in figures.refusal


def test_a_wrong_token_is_refused_before_the_provider(
    tmp_path: Path, provider: tuple[str, Seen], meters: list[control.Meter]
) -> None:
    base, seen = provider
    meter = start(tmp_path, base, budget=1.0)
    meters.append(meter)
    status, reply = post(f"{meter.openai_url}/chat/completions", {"model": "gpt-4o-mini"}, "not-the-token")
    assert status == 401 and seen.requests == []
    status, _ = post(f"{meter.anthropic_url}/v1/other", {"model": "x"}, meter.token)
    assert status == 404 and seen.requests == []


def test_the_output_limit_is_lowered_to_what_the_budget_leaves(
    tmp_path: Path, provider: tuple[str, Seen], meters: list[control.Meter]
) -> None:
    base, seen = provider
    meter = start(tmp_path, base, budget=0.001)  # gpt-4o-mini: ~1600 output tokens at most
    meters.append(meter)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}
    assert post(f"{meter.openai_url}/chat/completions", body, meter.token)[0] == 200
    asked = seen.requests[0][1]["max_tokens"]
    assert 1000 < asked < 0.001 / 0.6e-6
    del body["max_tokens"]  # none named: the proxy names one
    assert post(f"{meter.openai_url}/chat/completions", body, meter.token)[0] == 200
    assert 0 < seen.requests[1][1]["max_tokens"] < asked


def test_an_openai_stream_passes_through_and_its_usage_is_counted(
    tmp_path: Path, provider: tuple[str, Seen], meters: list[control.Meter]
) -> None:
    base, seen = provider
    meter = start(tmp_path, base, budget=1.0)
    meters.append(meter)
    body = {"model": "gpt-4o-mini", "messages": [], "stream": True, "max_tokens": 500}
    status, reply = post(f"{meter.openai_url}/chat/completions", body, meter.token)
    assert status == 200
    events = [e for e in reply.decode().split("\n\n") if e.strip()]
    # The client did not ask for usage: the proxy asked, read it, and kept it from the client.
    assert seen.requests[0][1]["stream_options"] == {"include_usage": True}
    assert len(events) == 3 and events[-1] == "data: [DONE]" and '"usage"' not in reply.decode()
    figures = written(meter, calls=1)
    assert (figures.calls, figures.tokens_in, figures.tokens_out) == (1, 1000, 500)
    body["stream_options"] = {"include_usage": True}  # asked for: it reaches the client
    status, reply = post(f"{meter.openai_url}/chat/completions", body, meter.token)
    assert '"usage"' in reply.decode() and settled(meter).tokens_in == 2000


def test_anthropic_messages_streamed_counted_and_refused_in_anthropic_form(
    tmp_path: Path, provider: tuple[str, Seen], meters: list[control.Meter]
) -> None:
    base, seen = provider
    # claude-sonnet-4-5: $3 in, $15 out, cache reads $0.30 per million tokens.
    meter = start(tmp_path, base, budget=0.02)
    meters.append(meter)
    url = f"{meter.anthropic_url}/v1/messages"
    body = {"model": "claude-sonnet-4-5", "max_tokens": 500, "stream": True, "messages": []}
    status, reply = post(url, body, meter.token)
    assert status == 200 and b"message_delta" in reply
    path, _, headers = seen.requests[0]
    assert path == "/v1/messages" and headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in headers  # the job's token goes no further
    one = 1000 * 3e-6 + 100 * 0.3e-6 + 500 * 15e-6
    figures = written(meter, calls=1)
    assert (figures.tokens_in, figures.tokens_out) == (1100, 500)
    assert figures.cost_usd == pytest.approx(one)
    assert post(url, {**body, "stream": False}, meter.token)[0] == 200
    status, reply = post(url, body, meter.token)
    assert status == 402
    refusal = json.loads(reply)
    assert refusal["type"] == "error" and refusal["error"]["type"] == "billing_error"
    assert len(seen.requests) == 2 and settled(meter).refused == 1


def test_a_model_without_a_price_is_counted_at_no_cost_and_said_so(
    tmp_path: Path, provider: tuple[str, Seen], meters: list[control.Meter]
) -> None:
    base, seen = provider
    meter = start(tmp_path, base, budget=0.0001)
    meters.append(meter)
    body = {"model": "smollm2-local", "messages": []}
    for _ in range(3):  # no price: the budget cannot bind, the tokens are still counted
        assert post(f"{meter.openai_url}/chat/completions", body, meter.token)[0] == 200
    figures = settled(meter)
    assert (figures.calls, figures.tokens_in, figures.cost_usd, figures.priced) == (3, 3000, 0.0, False)
    assert "no price in litellm's map for smollm2-local" in figures.note


def test_the_proxy_process_holds_the_key_out_of_reach(
    tmp_path: Path, provider: tuple[str, Seen], meters: list[control.Meter]
) -> None:
    meter = start(tmp_path, provider[0], budget=1.0)
    meters.append(meter)
    # The keys came on its stdin: not in its environment, its arguments or its files.
    for entry in ("environ", "cmdline"):
        data = Path(f"/proc/{meter.process.pid}/{entry}").read_bytes()
        assert KEY.encode() not in data and ANTHROPIC_KEY.encode() not in data
    for path in tmp_path.iterdir():
        assert KEY.encode() not in path.read_bytes()
