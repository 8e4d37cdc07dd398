"""How an attempt's agent is started, and what it reported when it ended.

Every agent runs the same way, as a shell command started by the node's keeper (so it
outlives the daemon like any job):

- ``shell``: the job's command.
- ``llm``: ``python -m node_agent.agents.llm``, configured through FLOTA_LLM_* variables;
  it writes a JSON report (steps, tokens, cost, status) into the attempt's journal.
- an external agent CLI (claude, aider, codex ...): the command line the CLI built from
  its template; cost and steps are read from the last JSON object it printed, at the
  dotted paths the spec names.

With a check (``--check``), the agent runs in a child shell and the check runs after it
in the worktree; the check's exit status lands in a file next to the output.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from node_agent.local_models import LocalModel
from protos.flota.v1 import types_pb2

__all__ = ["AgentOutcome", "command_for", "read_outcome"]

REPORT_FILE = "report.json"
CHECK_FILE = "check"
_TAIL_BYTES = 1 << 20

# The agent in a child shell, so that its `exit` does not skip the check.
_WITH_CHECK = (
    '/bin/bash -c "$FLOTA_AGENT_COMMAND"; rc=$?; '
    'printf "%s\\n" "[flota] check: $FLOTA_CHECK"; '
    '/bin/bash -c "$FLOTA_CHECK" 2>&1; printf "%s\\n" "$?" > "$FLOTA_CHECK_FILE"; '
    'exit "$rc"'
)


@dataclass(frozen=True)
class AgentOutcome:
    """What the agent said about its own run; empty for a plain shell job."""

    status: str = ""  # the agent's own verdict (llm: success | partial | failed)
    error: str = ""
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    check: str = ""  # passed | failed | ""
    answer: str = ""


def command_for(
    spec: types_pb2.JobSpec, journal_dir: Path, local_models: Sequence[LocalModel] = ()
) -> tuple[str, dict[str, str]]:
    """The shell command for the attempt and the environment it adds."""
    env: dict[str, str] = {}
    if spec.agent == "llm":
        command = shlex.join([sys.executable, "-m", "node_agent.agents.llm"])
        api_base = spec.api_base or next((m.api_base for m in local_models if m.model == spec.model), "")
        env.update(
            FLOTA_LLM_MODEL=spec.model,
            FLOTA_LLM_PROMPT=spec.prompt,
            FLOTA_LLM_MAX_STEPS=str(spec.max_steps or 30),
            FLOTA_LLM_BUDGET_USD=repr(spec.budget_usd),
            # The runner enforces the job's timeout (status "timeout"); the agent then
            # writes its report on SIGTERM.
            FLOTA_LLM_TIMEOUT_S="0",
            FLOTA_LLM_REPORT=str(journal_dir / REPORT_FILE),
            LITELLM_LOCAL_MODEL_COST_MAP="True",
        )
        if api_base:
            env["FLOTA_LLM_API_BASE"] = api_base
            local_kind = spec.model.startswith(("lm_studio/", "ollama/", "openai/"))
            if local_kind and "OPENAI_API_KEY" not in os.environ:
                env["OPENAI_API_KEY"] = "none"  # a local server wants some key (a secret still wins)
    else:
        command = spec.command
    if spec.check:
        env.update(
            FLOTA_AGENT_COMMAND=command,
            FLOTA_CHECK=spec.check,
            FLOTA_CHECK_FILE=str(journal_dir / CHECK_FILE),
        )
        command = _WITH_CHECK
    return command, env


def _dig(data: object, path: str) -> object:
    for part in path.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.0
    try:
        number = float(value)
    except ValueError:
        return 0.0
    return number if math.isfinite(number) and number >= 0 else 0.0


def _last_json_object(output: Path) -> Mapping[str, object] | None:
    """The last line of the output that is a JSON object, or the whole tail if it is one."""
    try:
        with open(output, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - _TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for text in [*reversed(tail.splitlines()), tail]:
        text = text.strip()
        if text.startswith("{") and text.endswith("}"):
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None


def read_outcome(spec: types_pb2.JobSpec, journal_dir: Path, output: Path) -> AgentOutcome:
    check = ""
    try:
        check = "passed" if int((journal_dir / CHECK_FILE).read_text().strip()) == 0 else "failed"
    except (OSError, ValueError):
        pass
    report: Mapping[str, object] | None = None
    if spec.agent == "llm":
        try:
            loaded = json.loads((journal_dir / REPORT_FILE).read_text())
            report = loaded if isinstance(loaded, dict) else None
        except (OSError, ValueError):
            report = None
        paths = {
            "steps": "steps",
            "tokens_in": "tokens_in",
            "tokens_out": "tokens_out",
            "cost_usd": "cost_usd",
        }
    else:
        paths = dict(spec.report_paths)
        report = _last_json_object(output) if paths else None
    if report is None:
        return AgentOutcome(check=check)
    status = str(report.get("status") or "") if spec.agent == "llm" else ""
    error = report.get("error") if spec.agent == "llm" else None
    return AgentOutcome(
        status=status if status in ("success", "partial", "failed") else "",
        error=str(error)[:500] if error else "",
        steps=int(_number(_dig(report, paths["steps"]))) if "steps" in paths else 0,
        tokens_in=int(_number(_dig(report, paths["tokens_in"]))) if "tokens_in" in paths else 0,
        tokens_out=int(_number(_dig(report, paths["tokens_out"]))) if "tokens_out" in paths else 0,
        cost_usd=_number(_dig(report, paths["cost_usd"])) if "cost_usd" in paths else 0.0,
        check=check,
        answer=str(report.get("answer") or "")[:4000] if spec.agent == "llm" else "",
    )
