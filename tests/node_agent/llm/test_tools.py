"""The llm agent's toolbox: every failure becomes a message, the schemas are OpenAI functions."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from node_agent.agents.llm.tools import TOOL_NAMES, TOOL_SCHEMAS, Toolbox
from tests.node_agent.llm.program import snapshot

pytestmark = pytest.mark.timeout(60)


def test_toolbox_turns_every_failure_into_a_message(box: tuple[Path, Path]) -> None:
    wt, outside = box
    tools = Toolbox(wt, env={"PATH": os.environ["PATH"]})
    (wt / "out_dir").symlink_to(outside)
    (wt / "alias").symlink_to("a.txt")
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("read_file", {"path": "../outside/secret.txt"}, "error: path escapes the worktree"),
        ("read_file", {"path": "/etc/passwd"}, "error: path escapes the worktree"),
        ("write_file", {"path": "out_dir/new.txt", "content": "x"}, "error: path escapes the worktree"),
        ("write_file", {"path": "alias", "content": "x"}, "error: refusing to write through a symlink"),
        (
            "edit_file",
            {"path": "alias", "old": "alpha", "new": "x"},
            "error: refusing to write through a symlink",
        ),
        ("read_file", {}, "error: missing argument 'path'"),
        ("read_file", {"path": 3}, "error: argument 'path' must be a str"),
        ("read_file", {"path": "a.txt", "offset": "x"}, "error: argument 'offset' must be an integer"),
        ("read_file", {"path": "a.txt", "bogus": 1}, "error: unknown argument(s) for read_file: bogus"),
        ("run_command", {"command": "true", "timeout_s": -1}, "error: timeout_s must be > 0"),
        ("nope", {}, "error: unknown tool 'nope'"),
    ]
    for name, args, expected in cases:
        result = tools.call(name, args)
        assert not result.ok and result.output.startswith(expected), (name, args, result)
    assert snapshot(outside) == {"secret.txt": "TOP-SECRET\n"}
    assert (wt / "a.txt").read_text() == "alpha\nbeta\ngamma\n"
    done = tools.call("finish", {"summary": "all done"})
    assert done.ok and done.finished and done.output == "all done"
    capped = tools.call("run_command", {"command": "sleep 20", "timeout_s": 60}, time_left_s=0.3)
    assert "killed after the timeout of 0.3 s" in capped.output
    tools.call("run_command", {"command": "(sleep 30 &) ; echo bg"})  # a background leftover
    tools.close()
    assert tools.groups == set()


def test_tool_schemas_are_openai_functions() -> None:
    assert {s["function"]["name"] for s in TOOL_SCHEMAS} == TOOL_NAMES
    assert {"list_files", "read_file", "write_file", "edit_file", "run_command", "finish"} == TOOL_NAMES
    for schema in TOOL_SCHEMAS:
        assert schema["type"] == "function"
        params = schema["function"]["parameters"]
        assert params["type"] == "object" and set(params["required"]) <= set(params["properties"])
    json.dumps(TOOL_SCHEMAS)
