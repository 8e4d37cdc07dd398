"""node_agent/local_models.py against a real (loopback) OpenAI-compatible server: the
models it serves, and its slots as the node was told, as the server reports, else 1."""

from __future__ import annotations

from node_agent.local_models import LocalModel, probe_local_models, server_key
from tests.fake_openai import FakeOpenAI


def test_a_servers_slots_as_told_as_reported_else_one() -> None:
    with FakeOpenAI(total_slots=3) as llama, FakeOpenAI() as plain:
        servers = (llama.base_url, plain.base_url)
        found = [m for m in probe_local_models(servers) if m.api_base in servers]
        assert found == [
            LocalModel("openai/fake", llama.base_url, 3),
            LocalModel("openai/fake", plain.base_url, 1),
        ]
        told = {server_key(llama.base_url): 1, server_key(plain.base_url): 5}
        found = [m for m in probe_local_models(servers, told) if m.api_base in servers]
        assert [m.slots for m in found] == [1, 5]


def test_server_key_is_one_spelling() -> None:
    assert {
        server_key(u)
        for u in ("http://127.0.0.1:11434", "http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/")
    } == {"http://127.0.0.1:11434"}
