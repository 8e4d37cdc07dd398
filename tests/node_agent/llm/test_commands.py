"""The llm agent's run_command tool: status, bounded output, the model's credentials kept
out, and a timeout that takes the whole process group down."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from node_agent.agents.llm.commands import MAX_COMMAND_OUTPUT, command_env, run_command
from node_agent.agents.llm.errors import ToolError
from tests.node_agent.llm.program import running, wait_until

pytestmark = pytest.mark.timeout(60)


def test_run_command_status_output_and_env(box: tuple[Path, Path]) -> None:
    wt, _ = box
    out = run_command(wt, "cat a.txt; echo oops >&2; exit 4", env=command_env(os.environ))
    assert out.startswith("[exit code 4,") and "alpha" in out and "oops" in out
    env = command_env(
        {"PATH": os.environ["PATH"], "OPENAI_API_KEY": "sk-x", "FLOTA_LLM_PROMPT": "p", "KEEP": "1"}
    )
    assert env == {"PATH": os.environ["PATH"], "KEEP": "1"}  # the model's credentials stay ours
    out = run_command(wt, 'echo "[${OPENAI_API_KEY:-none}] [$KEEP]"', env=env)
    assert "[none] [1]" in out
    long = run_command(wt, "yes 0123456789 | head -c 200000")
    assert len(long) < MAX_COMMAND_OUTPUT + 200 and "bytes of output cut" in long
    with pytest.raises(ToolError, match="empty command"):
        run_command(wt, "  ")


def test_run_command_timeout_kills_the_whole_group(box: tuple[Path, Path]) -> None:
    wt, _ = box
    started = time.monotonic()
    out = run_command(wt, "sleep 30 & echo $! > child.pid; echo started; wait", timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert out.startswith("[killed after the timeout of 0.5 s") and "started" in out
    child = int((wt / "child.pid").read_text())
    assert wait_until(lambda: not running(child), 5)
