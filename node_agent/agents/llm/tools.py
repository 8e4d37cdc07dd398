"""The llm agent's toolbox: the tools' schemas as the model sees them, and their dispatch.

The tools themselves live in :mod:`files` (list, read, write, edit, confined to the
worktree) and :mod:`commands` (``run_command``); ``finish`` ends the run. A refusal, like
any other failure of a tool, becomes a message for the model (``"error: ..."``) through
:meth:`Toolbox.call`; the agent loop never sees an exception from a tool.

This module imports nothing heavy: the daemon side may import it cheaply.

Error handling: :meth:`Toolbox.call` turns :class:`ToolError`, ``OSError`` and bad
argument values into an error string; it raises nothing for the model's mistakes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from node_agent.agents.llm.commands import (
    DEFAULT_COMMAND_S,
    MAX_COMMAND_OUTPUT,
    command_env,
    kill_group,
    run_command,
)
from node_agent.agents.llm.errors import ToolError
from node_agent.agents.llm.files import (
    DEFAULT_READ_LINES,
    MAX_READ_BYTES,
    edit_file,
    list_files,
    read_file,
    write_file,
)

__all__ = ["TOOL_NAMES", "TOOL_SCHEMAS", "ToolResult", "Toolbox", "describe_call"]


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


_PATH = {"type": "string", "description": "A path relative to the worktree root."}

TOOL_SCHEMAS: Final[list[dict[str, Any]]] = [
    _function(
        "list_files",
        "List files and directories under a directory of the worktree, recursively (.git is skipped).",
        {"path": {**_PATH, "default": "."}},
        [],
    ),
    _function(
        "read_file",
        f"Read a text file: lines offset..offset+limit (0-based), at most {MAX_READ_BYTES} bytes per call.",
        {
            "path": _PATH,
            "offset": {"type": "integer", "description": "First line to show, 0-based.", "default": 0},
            "limit": {
                "type": "integer",
                "description": "How many lines to show.",
                "default": DEFAULT_READ_LINES,
            },
        },
        ["path"],
    ),
    _function(
        "write_file",
        "Create or overwrite a file with the given content (parent directories are created).",
        {"path": _PATH, "content": {"type": "string", "description": "The whole new content of the file."}},
        ["path", "content"],
    ),
    _function(
        "edit_file",
        "Replace text in a file: `old` must occur exactly once in the file (whitespace included); "
        "it is replaced by `new`.",
        {
            "path": _PATH,
            "old": {"type": "string", "description": "The exact text to replace; must occur exactly once."},
            "new": {"type": "string", "description": "The replacement text."},
        },
        ["path", "old", "new"],
    ),
    _function(
        "run_command",
        "Run a bash command in the worktree root (no stdin). Returns its exit status and output "
        f"(at most {MAX_COMMAND_OUTPUT} bytes: the beginning and the end).",
        {
            "command": {"type": "string", "description": "The bash command line."},
            "timeout_s": {
                "type": "number",
                "description": f"Kill the command after this many seconds (default {DEFAULT_COMMAND_S:g}).",
                "default": DEFAULT_COMMAND_S,
            },
        },
        ["command"],
    ),
    _function(
        "finish",
        "Call this once the task is done (or cannot be done), with a short summary of what you did.",
        {"summary": {"type": "string", "description": "What was done, for the person who asked."}},
        ["summary"],
    ),
]

TOOL_NAMES: Final = frozenset(s["function"]["name"] for s in TOOL_SCHEMAS)


@dataclass(frozen=True)
class ToolResult:
    """What one tool call gave: the text for the model, and whether the agent is done."""

    output: str
    ok: bool = True
    finished: bool = False


def _arg(args: Mapping[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    if name not in args or args[name] is None:
        if default is ...:
            raise ToolError(f"error: missing argument {name!r}")
        return default
    value = args[name]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ToolError(f"error: argument {name!r} must be an integer")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError(f"error: argument {name!r} must be a number")
        return float(value)
    if not isinstance(value, kind):
        raise ToolError(f"error: argument {name!r} must be a {kind.__name__}")
    return value


class Toolbox:
    """The tools bound to one worktree; :meth:`call` never raises for the model's mistakes."""

    def __init__(self, root: Path, env: Mapping[str, str] | None = None) -> None:
        self.root = Path(os.path.realpath(root))
        self.env = command_env(os.environ if env is None else env)
        self.groups: set[int] = set()  # process groups of commands, killed at close()

    def call(self, name: str, args: Mapping[str, Any], time_left_s: float | None = None) -> ToolResult:
        """Run tool ``name``; ``time_left_s`` caps a command's timeout (the agent's deadline)."""
        try:
            return self._call(name, args, time_left_s)
        except ToolError as exc:
            return ToolResult(str(exc), ok=False)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            return ToolResult(f"error: {exc.strerror or exc}{where}", ok=False)
        except (ValueError, TypeError, UnicodeError) as exc:
            return ToolResult(f"error: {exc}", ok=False)

    def _call(self, name: str, args: Mapping[str, Any], time_left_s: float | None) -> ToolResult:
        unknown = set(args) - _ARGS.get(name, set())
        if name not in TOOL_NAMES:
            raise ToolError(f"error: unknown tool {name!r}; the tools are: {', '.join(sorted(TOOL_NAMES))}")
        if unknown:
            raise ToolError(f"error: unknown argument(s) for {name}: {', '.join(sorted(unknown))}")
        root = self.root
        if name == "list_files":
            return ToolResult(list_files(root, _arg(args, "path", str, ".")))
        if name == "read_file":
            return ToolResult(
                read_file(
                    root,
                    _arg(args, "path", str),
                    _arg(args, "offset", int, 0),
                    _arg(args, "limit", int, DEFAULT_READ_LINES),
                )
            )
        if name == "write_file":
            return ToolResult(write_file(root, _arg(args, "path", str), _arg(args, "content", str)))
        if name == "edit_file":
            return ToolResult(
                edit_file(root, _arg(args, "path", str), _arg(args, "old", str), _arg(args, "new", str))
            )
        if name == "run_command":
            timeout = _arg(args, "timeout_s", float, DEFAULT_COMMAND_S)
            if timeout <= 0:
                raise ToolError("error: timeout_s must be > 0")
            if time_left_s is not None:
                timeout = min(timeout, max(time_left_s, 0.1))
            return ToolResult(
                run_command(root, _arg(args, "command", str), timeout, env=self.env, groups=self.groups)
            )
        summary = _arg(args, "summary", str)
        return ToolResult(summary, finished=True)

    def close(self) -> None:
        """Kill what commands left running in the background."""
        for group in sorted(self.groups):
            kill_group(group, grace_s=0.5)
        self.groups.clear()


_ARGS: Final[dict[str, set[str]]] = {
    s["function"]["name"]: set(s["function"]["parameters"]["properties"]) for s in TOOL_SCHEMAS
}


def describe_call(name: str, args: Mapping[str, Any], width: int = 100) -> str:
    """One short line for a tool call, for the step log: ``edit_file src/x.py``."""
    if name == "run_command":
        detail = str(args.get("command", ""))
    elif name == "finish":
        detail = str(args.get("summary", ""))
    else:
        detail = str(args.get("path", "" if name != "list_files" else "."))
    line = f"{name} {' '.join(detail.split())}".rstrip()
    return line if len(line) <= width else line[: width - 1] + "…"
