"""What the node and the llm agent agree on: the environment it starts with, the report it
leaves, its exit codes.

The node's launcher (``node_agent/agents/launch.py``) sets these and reads the report;
the agent reads nothing else:

    FLOTA_WORKTREE        the worktree (required): the root every tool is confined to
    FLOTA_LLM_MODEL       a litellm model string (required): openai/..., anthropic/...,
                          ollama/..., lm_studio/..., or any name served at the API base
    FLOTA_LLM_PROMPT      the task (required)
    FLOTA_LLM_MAX_STEPS   model calls allowed (default 30)
    FLOTA_LLM_BUDGET_USD  spending cap in USD (default 0: no cap)
    FLOTA_LLM_TIMEOUT_S   wall-clock cap in seconds (default 0: none)
    FLOTA_LLM_REPORT      where to write the JSON report at the end (optional; atomic)
    FLOTA_LLM_API_BASE    an OpenAI-compatible server, e.g. http://127.0.0.1:1234/v1 (optional)
    FLOTA_LLM_MAX_OUTPUT_TOKENS  max_tokens asked for per call (default 4096)

API keys come in the providers' usual variables (OPENAI_API_KEY, ANTHROPIC_API_KEY...).

The report is one JSON object, the fields of :class:`Report` in order, indented by 2,
ending in a newline. Its ``reason`` says why a partial or failed run ended, as a word the
node passes on (``protos.contract.EndReason``): max_steps, budget, time_limit,
model_unreachable, or "" (no reason the coordinator acts on). Exit codes: 0 success,
3 partial, 1 failed, 2 bad input.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, TypeVar

from node_agent.agents.llm.errors import BadInput
from protos.contract import EndReason, ResultStatus

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "DEFAULT_MAX_STEPS",
    "EXIT_BAD_INPUT",
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_PARTIAL",
    "EXIT_SUCCESS",
    "Config",
    "Report",
    "write_report",
]

EXIT_SUCCESS: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
EXIT_PARTIAL: Final = 3

# The statuses the agent reports (the node maps them onto its attempt), and their exit codes.
EXIT_CODES: Final[Mapping[ResultStatus, int]] = {
    ResultStatus.SUCCESS: EXIT_SUCCESS,
    ResultStatus.PARTIAL: EXIT_PARTIAL,
    ResultStatus.FAILED: EXIT_FAILED,
}

DEFAULT_MAX_STEPS: Final = 30
DEFAULT_MAX_OUTPUT_TOKENS: Final = 4096


@dataclass(frozen=True)
class Config:
    """One run, as read from the environment."""

    worktree: Path
    model: str
    prompt: str
    max_steps: int = DEFAULT_MAX_STEPS
    budget_usd: float = 0.0
    timeout_s: float = 0.0
    report: Path | None = None
    api_base: str | None = None
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Raises :class:`BadInput` naming the first variable that is wrong."""
        missing = [k for k in ("FLOTA_WORKTREE", "FLOTA_LLM_MODEL", "FLOTA_LLM_PROMPT") if not env.get(k)]
        if missing:
            raise BadInput(
                f"missing environment variable{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"
            )
        worktree = Path(env["FLOTA_WORKTREE"])
        if not worktree.is_dir():
            raise BadInput(f"FLOTA_WORKTREE is not a directory: {worktree}")
        report = env.get("FLOTA_LLM_REPORT") or None
        if report is not None and not Path(report).parent.is_dir():
            raise BadInput(f"FLOTA_LLM_REPORT: no such directory: {Path(report).parent}")
        return cls(
            worktree=worktree,
            model=env["FLOTA_LLM_MODEL"].strip(),
            prompt=env["FLOTA_LLM_PROMPT"],
            max_steps=_number(env, "FLOTA_LLM_MAX_STEPS", int, DEFAULT_MAX_STEPS, minimum=1),
            budget_usd=_number(env, "FLOTA_LLM_BUDGET_USD", float, 0.0, minimum=0),
            timeout_s=_number(env, "FLOTA_LLM_TIMEOUT_S", float, 0.0, minimum=0),
            report=Path(report) if report else None,
            api_base=(env.get("FLOTA_LLM_API_BASE") or "").strip() or None,
            max_output_tokens=_number(
                env, "FLOTA_LLM_MAX_OUTPUT_TOKENS", int, DEFAULT_MAX_OUTPUT_TOKENS, minimum=1
            ),
        )


_N = TypeVar("_N", int, float)


def _number(env: Mapping[str, str], name: str, kind: type[_N], default: _N, minimum: _N) -> _N:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise BadInput(f"{name} must be {'an integer' if kind is int else 'a number'}, not {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")) or value < minimum:
        raise BadInput(f"{name} must be a number >= {minimum}, not {raw!r}")
    return value


@dataclass
class Report:
    """The run's outcome, written as JSON to FLOTA_LLM_REPORT."""

    status: ResultStatus  # success | partial | failed (the keys of EXIT_CODES)
    error: str | None
    steps: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    answer: str
    model: str
    duration_s: float
    reason: EndReason = EndReason.NONE  # why it ended partial or failed, for the coordinator

    @classmethod
    def early(cls, status: ResultStatus, error: str, model: str) -> Report:
        """A run that ended before (or outside) the loop: no steps, nothing spent."""
        return cls(status, error, 0, 0, 0, 0.0, "", model, 0.0)


def write_report(path: Path, report: Report) -> None:
    """Write atomically: a reader sees the old file, or none, or the whole new one."""
    # A StrEnum encodes as its plain lowercase string: the bytes are those of a str status.
    data = json.dumps(asdict(report), indent=2).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
