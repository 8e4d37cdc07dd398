"""The agent's contract with the node: the environment it reads, the report it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node_agent.agents.llm.contract import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    DEFAULT_MAX_STEPS,
    EXIT_CODES,
    Config,
    Report,
    write_report,
)
from node_agent.agents.llm.errors import BadInput
from protos.contract import EndReason, ResultStatus


def test_the_environment_with_defaults(tmp_path: Path) -> None:
    env = {"FLOTA_WORKTREE": str(tmp_path), "FLOTA_LLM_MODEL": " openai/m ", "FLOTA_LLM_PROMPT": "do it"}
    config = Config.from_env(env)
    assert config == Config(tmp_path, "openai/m", "do it")
    assert (config.max_steps, config.max_output_tokens) == (DEFAULT_MAX_STEPS, DEFAULT_MAX_OUTPUT_TOKENS)
    assert (config.budget_usd, config.timeout_s, config.report, config.api_base) == (0.0, 0.0, None, None)
    with pytest.raises(BadInput, match="^FLOTA_LLM_REPORT: no such directory"):
        Config.from_env({**env, "FLOTA_LLM_REPORT": str(tmp_path / "nope" / "report.json")})
    with pytest.raises(BadInput, match="^FLOTA_LLM_TIMEOUT_S must be a number >= 0, not 'nan'"):
        Config.from_env({**env, "FLOTA_LLM_TIMEOUT_S": "nan"})


def test_the_report_file_is_the_json_the_launcher_reads(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_report(
        path,
        Report(
            ResultStatus.PARTIAL,
            "max steps reached (3)",
            3,
            120,
            30,
            0.0125,
            "",
            "m",
            1.5,
            EndReason.MAX_STEPS,
        ),
    )
    # Byte for byte what the agent wrote when its status (and reason) were plain strings.
    expected = {
        "status": "partial",
        "error": "max steps reached (3)",
        "steps": 3,
        "tokens_in": 120,
        "tokens_out": 30,
        "cost_usd": 0.0125,
        "answer": "",
        "model": "m",
        "duration_s": 1.5,
        "reason": "max_steps",
    }
    assert path.read_bytes() == json.dumps(expected, indent=2).encode() + b"\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_exit_codes() -> None:
    assert dict(EXIT_CODES) == {"success": 0, "partial": 3, "failed": 1}
