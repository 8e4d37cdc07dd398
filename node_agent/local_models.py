"""Local model servers on this machine: LM Studio (:1234), Ollama (:11434) and any
OpenAI-compatible server named in node.toml (`model_servers`).

Each model becomes a litellm model string (`lm_studio/<id>`, `ollama/<name>`,
`openai/<id>` for a generic server) with the api_base a job on this node should use.
Only loopback is probed, with a short timeout, from a thread: a missing server costs
one refused connection.

Each server has a capacity, its slots: the jobs it takes at once, shared by its models
(the coordinator never places more of them on this node at a time). It is the node's
``--model-slots`` for that server, else what the server reports (llama.cpp's
``GET /props`` ``total_slots``, or the length of its ``GET /slots``; LM Studio and Ollama
report none), else 1.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["LocalModel", "probe_local_models", "server_key"]

LM_STUDIO = "http://127.0.0.1:1234/v1"
OLLAMA = "http://127.0.0.1:11434"
_TIMEOUT_S = 0.5
_MAX_MODELS = 64
_MAX_SLOTS = 256


@dataclass(frozen=True, slots=True)
class LocalModel:
    model: str  # a litellm model string
    api_base: str
    slots: int = 1  # jobs its server takes at once


def server_key(url: str) -> str:
    """One spelling of a server's URL: without a trailing / or /v1 (Ollama's api_base has
    it, its probe URL not), to match --model-slots with what is probed."""
    return url.rstrip("/").removesuffix("/v1")


def _get(url: str) -> object:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as reply:  # noqa: S310 (loopback only)
        return json.loads(reply.read(1 << 20))


def _openai_models(base: str) -> list[str]:
    data = _get(f"{base.rstrip('/')}/models")
    items = data.get("data", []) if isinstance(data, dict) else []
    return [str(m["id"]) for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]


def _ollama_models(base: str) -> list[str]:
    data = _get(f"{base}/api/tags")
    items = data.get("models", []) if isinstance(data, dict) else []
    return [str(m["name"]) for m in items if isinstance(m, dict) and isinstance(m.get("name"), str)]


def reported_slots(base: str) -> int:
    """The jobs a server says it takes at once (llama.cpp), or 0 if it says nothing."""
    root = server_key(base)
    try:
        props = _get(f"{root}/props")
        total = props.get("total_slots") if isinstance(props, dict) else None
        if isinstance(total, int) and not isinstance(total, bool) and total > 0:
            return min(total, _MAX_SLOTS)
    except (OSError, ValueError, urllib.error.URLError):
        pass
    try:
        slots = _get(f"{root}/slots")
        if isinstance(slots, list) and slots:
            return min(len(slots), _MAX_SLOTS)
    except (OSError, ValueError, urllib.error.URLError):
        pass
    return 0


def probe_local_models(
    extra_servers: Sequence[str] = (), slots: Mapping[str, int] | None = None
) -> tuple[LocalModel, ...]:
    """What the local servers serve now; a server that is down or odd adds nothing.
    ``slots``: each server's capacity as the node was told (by ``server_key``)."""
    given = slots or {}
    found: list[LocalModel] = []
    probes = [("lm_studio", LM_STUDIO, _openai_models), ("ollama", OLLAMA, _ollama_models)]
    probes += [("openai", base.rstrip("/"), _openai_models) for base in extra_servers]
    for prefix, base, list_models in probes:
        try:
            names = list_models(base)
        except (OSError, ValueError, urllib.error.URLError):
            continue
        api_base = f"{base}/v1" if prefix == "ollama" else base
        capacity = given.get(server_key(base)) or reported_slots(base) or 1
        found += [LocalModel(f"{prefix}/{name}", api_base, capacity) for name in names[:_MAX_MODELS]]
    return tuple(found)
