"""A fake Anthropic Messages API server on 127.0.0.1 (what Claude Code speaks), for tests.

The scripted server of tests/fake_openai.py with Anthropic's endpoint, ``POST /v1/messages``:
a reply is a Message (``tool_use(...)``, ``text(...)``), sent as JSON, or as the Messages
streaming events (message_start, content blocks and their deltas, message_delta,
message_stop) when the request says ``"stream": true``, as Claude Code's does.

    with FakeAnthropic(by_model={"claude-sonnet-4-5": [tool_use("Write", file_path=..., content="hi"),
                                                      text("done")]}, default=text("ok")) as srv:
        env["ANTHROPIC_BASE_URL"] = srv.base_url
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from tests.fake_openai import Events, FakeOpenAI, Reply, Route

__all__ = ["FakeAnthropic", "message", "stream_events", "text", "tool_use"]

_ids = itertools.count(1)


def message(
    content: list[dict[str, Any]], usage: tuple[int, int] = (10, 5), stop_reason: str = "end_turn"
) -> Reply:
    """A Message with these content blocks."""
    return Reply(
        {
            "id": f"msg_{next(_ids)}",
            "type": "message",
            "role": "assistant",
            "model": "fake",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        }
    )


def tool_use(name: str, /, *, usage: tuple[int, int] = (10, 5), **arguments: Any) -> Reply:
    """A reply asking for one tool (Claude Code's: ``Write`` with file_path and content ...)."""
    block = {"type": "tool_use", "id": f"toolu_{next(_ids)}", "name": name, "input": arguments}
    return message([block], usage, "tool_use")


def text(content: str, usage: tuple[int, int] = (10, 5)) -> Reply:
    """A final text reply."""
    return message([{"type": "text", "text": content}], usage)


def stream_events(done: dict[str, Any]) -> Events:
    """A Message as the Messages API streams it."""
    start = {**done, "content": [], "stop_reason": None, "usage": {**done["usage"], "output_tokens": 0}}
    events: Events = [("message_start", {"message": start})]
    for index, block in enumerate(done["content"]):
        if block["type"] == "tool_use":
            opening = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            opening = {**block, "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        events.append(("content_block_start", {"index": index, "content_block": opening}))
        events.append(("content_block_delta", {"index": index, "delta": delta}))
        events.append(("content_block_stop", {"index": index}))
    stop = {"stop_reason": done["stop_reason"], "stop_sequence": None}
    events.append(
        ("message_delta", {"delta": stop, "usage": {"output_tokens": done["usage"]["output_tokens"]}})
    )
    events.append(("message_stop", {}))
    return [(name, {"type": name, **data}) for name, data in events]


def _render(body: dict[str, Any], request: dict[str, Any], model: str) -> dict[str, Any] | Events:
    if body.get("type") != "message":
        return body
    done = {**body, "model": model}
    return stream_events(done) if request.get("stream") else done


def _model(path: str, request: dict[str, Any]) -> str:
    return str(request.get("model", "fake"))


class FakeAnthropic(FakeOpenAI):
    """``base_url`` is what ANTHROPIC_BASE_URL takes (the client adds ``/v1/messages``)."""

    routes = (Route(lambda p: p.endswith("/v1/messages"), _model, _render),)
    url_path = ""
