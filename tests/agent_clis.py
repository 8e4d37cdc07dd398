"""The real agent CLIs the tests drive, where scripts/test puts them: venvs of their own
under .clis/ (scripts/python_clis), their executables in .clis/bin, which a test node gets
on its PATH. A test that needs a CLI fails with the install hint when it is missing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.fake_openai import Reply, call, text

__all__ = ["BIN", "FLOTA_YAML", "MODEL", "edit_script", "leftovers", "node_env", "require"]

BIN = Path(__file__).resolve().parent.parent / ".clis" / "bin"
INSTALL_HINT = "install it with: bash scripts/python_clis (scripts/test does)"
# What aider would fetch from the internet at start (litellm's price list) when its cache
# in ~/.aider is missing: a test node's HOME has it, so no traffic leaves the machine.
_AIDER_PRICES = {
    "openai/fake": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 8192,
        "max_output_tokens": 1024,
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 2e-06,
    }
}


MODEL = "openai/fake"  # as the scripted server (tests/fake_openai.py) serves it
# The repository's own settings for aider (flota.yaml travels with it): small models edit
# best in the "whole" format.
FLOTA_YAML = "agents:\n  aider:\n    flags: [--edit-format, whole]\n"


def edit_script(cli: str) -> list[Reply]:
    """The scripted model's answers that make ``cli`` create hello.txt in one step."""
    if cli == "architect":
        return [call("write_file", path="hello.txt", content="hello\n"), text("wrote hello.txt")]
    # aider edits by its "whole file" format: the file's name, then its text fenced.
    return [text("hello.txt\n```\nhello\n```\n")]


def require(name: str) -> Path:
    exe = BIN / name
    if not os.access(exe, os.X_OK):
        pytest.fail(f"the real {name} CLI is missing ({exe}); {INSTALL_HINT}")
    return exe


def node_env(home: Path) -> dict[str, str]:
    """A test node's environment: the CLIs on PATH, a HOME of its own (the CLIs write
    their settings there), aider's price cache in it."""
    cache = home / ".aider" / "caches" / "model_prices_and_context_window.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(_AIDER_PRICES))
    os.utime(cache, (time.time(), time.time()))
    return {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(home)}


def leftovers(job_id: str) -> list[int]:
    """Processes still running with the job's FLOTA_JOB_ID (the CLI and its children)."""
    needle = f"FLOTA_JOB_ID={job_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found
