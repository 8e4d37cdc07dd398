"""The llm agent's real program for tests: ``python -m node_agent.agents.llm`` in a
subprocess (as the runner starts it) with ``openai/<name>`` models and FLOTA_LLM_API_BASE
pointing at tests/fake_openai.py on 127.0.0.1; nothing goes anywhere else."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fake_openai import FakeOpenAI, Reply, raw
from tests.fleet import ROOT

__all__ = [
    "NO_CHOICES",
    "REPORT_FIELDS",
    "ROOT",
    "Outcome",
    "agent_env",
    "needs_litellm",
    "run_agent",
    "running",
    "snapshot",
    "wait_until",
]

needs_litellm = pytest.mark.skipif(
    importlib.util.find_spec("litellm") is None, reason="litellm is not installed"
)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): p.read_text() if p.is_file() and not p.is_symlink() else "<dir/link>"
        for p in sorted(directory.rglob("*"))
    }


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    report: dict[str, Any]
    requests: list[dict[str, Any]]


def agent_env(wt: Path, base_url: str, report: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTA_") and not k.endswith("_API_KEY")}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        OPENAI_API_KEY="dummy",
        FLOTA_WORKTREE=str(wt),
        FLOTA_LLM_MODEL="openai/fake-local-model",
        FLOTA_LLM_PROMPT="Change the code.",
        FLOTA_LLM_API_BASE=base_url,
        FLOTA_LLM_REPORT=str(report),
    )
    env.update(extra)
    return env


def run_agent(
    wt: Path, script: list[Reply], default: Reply | None = None, timeout_s: float = 40, **extra: str
) -> Outcome:
    report = wt.parent / "report.json"
    with FakeOpenAI(script, default=default) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "node_agent.agents.llm"],
            env=agent_env(wt, server.base_url, report, **extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        requests = server.requests
    return Outcome(proc.returncode, proc.stdout, proc.stderr, json.loads(report.read_text()), requests)


REPORT_FIELDS = {
    "status",
    "error",
    "steps",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "answer",
    "model",
    "duration_s",
    "reason",
}


NO_CHOICES = raw({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []})
