"""A fake Gemini API server on 127.0.0.1 (what Gemini CLI speaks), for tests.

The scripted server of tests/fake_openai.py with Google's endpoints,
``POST /v1beta/models/<model>:generateContent`` and ``:streamGenerateContent?alt=sse``
(one SSE chunk per reply): a reply is a GenerateContentResponse (``function_call(...)``,
``text(...)``); the model named in the path picks the ``by_model`` script.

    with FakeGemini(by_model={"gemini-2.5-flash": [function_call("write_file", file_path="a.txt",
                                                                 content="hi"), text("done")]}) as srv:
        env["GOOGLE_GEMINI_BASE_URL"] = srv.base_url
"""

from __future__ import annotations

from typing import Any

from tests.fake_openai import Events, FakeOpenAI, Reply, Route

__all__ = ["FakeGemini", "function_call", "response", "text"]


def response(parts: list[dict[str, Any]], usage: tuple[int, int] = (10, 5)) -> Reply:
    """A GenerateContentResponse with one candidate made of these parts."""
    return Reply(
        {
            "candidates": [
                {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": usage[0],
                "candidatesTokenCount": usage[1],
                "totalTokenCount": sum(usage),
            },
            "modelVersion": "fake",
        }
    )


def function_call(name: str, /, *, usage: tuple[int, int] = (10, 5), **arguments: Any) -> Reply:
    """A reply calling one tool (Gemini CLI's: ``write_file`` with file_path and content ...)."""
    return response([{"functionCall": {"name": name, "args": arguments}}], usage)


def text(content: str, usage: tuple[int, int] = (10, 5)) -> Reply:
    """A final text reply."""
    return response([{"text": content}], usage)


def _model(path: str, request: dict[str, Any]) -> str:
    return path.rsplit("/", 1)[-1].split(":")[0]


def _render_stream(body: dict[str, Any], request: dict[str, Any], model: str) -> dict[str, Any] | Events:
    return [("", {**body, "modelVersion": model})] if "candidates" in body else body


def _render(body: dict[str, Any], request: dict[str, Any], model: str) -> dict[str, Any]:
    return {**body, "modelVersion": model} if "candidates" in body else body


class FakeGemini(FakeOpenAI):
    """``base_url`` is what GOOGLE_GEMINI_BASE_URL takes (the client adds ``/v1beta/models/...``)."""

    routes = (
        Route(lambda p: p.endswith(":streamGenerateContent"), _model, _render_stream),
        Route(lambda p: p.endswith(":generateContent"), _model, _render),
    )
    url_path = ""
