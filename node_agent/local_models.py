"""Local model servers on this machine: LM Studio (:1234), Ollama (:11434) and any
OpenAI-compatible server named in node.toml (`model_servers`).

Each model becomes a litellm model string (`lm_studio/<id>`, `ollama/<name>`,
`openai/<id>` for a generic server) with the api_base a job on this node should use.
Only loopback is probed, with a short timeout, from a thread: a missing server costs
one refused connection.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LocalModel", "probe_local_models"]

LM_STUDIO = "http://127.0.0.1:1234/v1"
OLLAMA = "http://127.0.0.1:11434"
_TIMEOUT_S = 0.5
_MAX_MODELS = 64


@dataclass(frozen=True, slots=True)
class LocalModel:
    model: str  # a litellm model string
    api_base: str


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


def probe_local_models(extra_servers: Sequence[str] = ()) -> tuple[LocalModel, ...]:
    """What the local servers serve now; a server that is down or odd adds nothing."""
    found: list[LocalModel] = []
    probes = [("lm_studio", LM_STUDIO, _openai_models), ("ollama", OLLAMA, _ollama_models)]
    probes += [("openai", base.rstrip("/"), _openai_models) for base in extra_servers]
    for prefix, base, list_models in probes:
        try:
            names = list_models(base)
        except (OSError, ValueError, urllib.error.URLError):
            continue
        api_base = f"{base}/v1" if prefix == "ollama" else base
        found += [LocalModel(f"{prefix}/{name}", api_base) for name in names[:_MAX_MODELS]]
    return tuple(found)
