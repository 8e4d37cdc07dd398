"""The llm agent's tools, confined to one job's worktree.

Every path a model names goes through :func:`resolve_inside`: absolute paths, ``..``
that climbs out, and symlinks (the target itself or any parent) that lead outside the
root are refused, and nothing is ever written through a symlink. A refusal, like any
other failure of a tool, becomes a message for the model (``"error: ..."``) through
:meth:`Toolbox.call`; the agent loop never sees an exception from a tool.

Commands run as ``bash -c`` in the worktree, in their own process group (so a timeout
kills the whole group, children included), with stdin closed and output captured in an
anonymous temporary file (a background child keeping a pipe open cannot stall us), and
only a bounded head and tail of that output reaches the model.

The confinement is for the file tools: ``run_command`` runs bash as the job's user and
can reach whatever that user can; isolating it (a container, a namespace) is the
runner's business, not this module's.

This module imports nothing heavy: the daemon side may import it cheaply.

Error handling: :class:`ToolError` (and its subclass :class:`PathEscape`) is raised by
the tool functions for anything the model did wrong or the file system refused;
:meth:`Toolbox.call` turns it, and ``OSError``, into an error string.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "MAX_COMMAND_OUTPUT",
    "MAX_READ_BYTES",
    "TOOL_NAMES",
    "TOOL_SCHEMAS",
    "PathEscape",
    "ToolError",
    "ToolResult",
    "Toolbox",
    "command_env",
    "describe_call",
    "edit_file",
    "list_files",
    "read_file",
    "resolve_inside",
    "run_command",
    "write_file",
]


class ToolError(Exception):
    """A tool could not do what was asked; the message is for the model."""


class PathEscape(ToolError):
    """A path leads outside the worktree (absolute, ``..``, or a symlink)."""


MAX_READ_BYTES: Final = 32_000  # per read_file answer
DEFAULT_READ_LINES: Final = 400
MAX_LIST_ENTRIES: Final = 500
MAX_WRITE_BYTES: Final = 2_000_000
MAX_COMMAND_OUTPUT: Final = 16_000  # head + tail of a command's output
DEFAULT_COMMAND_S: Final = 120.0
MAX_COMMAND_S: Final = 1800.0
_KILL_GRACE_S: Final = 1.0
_SKIP_DIRS: Final = frozenset({".git"})
_SHELL: Final = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"


def resolve_inside(root: Path, path: str, *, for_write: bool = False) -> Path:
    """The file ``path`` names, relative to ``root``, once proven to stay inside it.

    Refused (:class:`PathEscape`): an empty or absolute path, a NUL, a ``..`` that climbs
    above the root, a symlink anywhere on the way whose target is outside, and with
    ``for_write`` a path that is itself a symlink (even one pointing inside: writes go
    to regular files only). ``a/../b`` is fine; it is normalized lexically first, so the
    kernel never walks a ``..`` through a symlink.
    """
    if not isinstance(path, str) or not path.strip():
        raise PathEscape("error: empty path")
    if "\0" in path:
        raise PathEscape(f"error: path contains a NUL byte: {path!r}")
    if os.path.isabs(path):
        raise PathEscape(
            f"error: path escapes the worktree: {path} (absolute; use a path relative to the root)"
        )
    base = Path(os.path.realpath(root))
    rel = os.path.normpath(path)
    if rel == ".." or rel.startswith("../"):
        raise PathEscape(f"error: path escapes the worktree: {path}")
    target = base if rel == "." else base / rel
    # Walk down from the root: each existing component that is a symlink must resolve inside.
    current = base
    for part in Path(rel).parts if rel != "." else ():
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            break  # the rest does not exist yet: nothing there can be a symlink
        except OSError as exc:
            raise ToolError(f"error: cannot access {path}: {exc.strerror}") from exc
        if stat.S_ISLNK(info.st_mode):
            real = Path(os.path.realpath(current))
            if not _is_within(real, base):
                link = current.relative_to(base)
                raise PathEscape(f"error: path escapes the worktree: {path} (symlink {link} points outside)")
    if not _is_within(Path(os.path.realpath(target)), base):
        raise PathEscape(f"error: path escapes the worktree: {path}")
    if for_write and os.path.islink(target):
        raise PathEscape(f"error: refusing to write through a symlink: {path}")
    return target


def _is_within(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(os.path.realpath(root))) or "."
    except ValueError:
        return str(path)


# --- the tools -------------------------------------------------------------------------


def list_files(root: Path, path: str = ".") -> str:
    """Files under ``path``, recursively, one per line (directories end in ``/``), .git skipped."""
    start = resolve_inside(root, path)
    if not start.exists():
        raise ToolError(f"error: no such directory: {path}")
    if not start.is_dir():
        raise ToolError(f"error: not a directory: {path}")
    base = Path(os.path.realpath(root))
    entries: list[str] = []
    more = 0
    for dirpath, dirnames, filenames in os.walk(start):  # does not follow symlinked dirs
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        here = Path(dirpath)
        names = [(d, True) for d in dirnames] + [(f, False) for f in sorted(filenames)]
        for name, is_dir in sorted(names):
            if len(entries) >= MAX_LIST_ENTRIES:
                more += 1
                continue
            entry = str((here / name).relative_to(base))
            if is_dir:
                entry += "/"
            elif os.path.islink(here / name):
                entry += " -> " + os.readlink(here / name)
            entries.append(entry)
    if not entries:
        return f"(no files under {path})"
    if more:
        entries.append(f"... and {more} more entries (list a subdirectory to see them)")
    return "\n".join(entries)


def read_file(root: Path, path: str, offset: int = 0, limit: int = DEFAULT_READ_LINES) -> str:
    """Lines ``offset`` (0-based) to ``offset + limit`` of a text file, at most MAX_READ_BYTES."""
    if offset < 0 or limit <= 0:
        raise ToolError("error: offset must be >= 0 and limit > 0")
    target = resolve_inside(root, path)
    if target.is_dir():
        raise ToolError(f"error: {path} is a directory (use list_files)")
    try:
        with open(target, "rb") as f:
            data = f.read(8 * MAX_READ_BYTES + (offset + limit) * 400)
            truncated_file = bool(f.read(1))
    except FileNotFoundError as exc:
        raise ToolError(f"error: no such file: {path}") from exc
    if b"\0" in data[:8192]:
        raise ToolError(f"error: {path} looks binary; not shown")
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    chosen = lines[offset : offset + limit]
    out: list[str] = []
    size = 0
    for line in chosen:
        if size + len(line) > MAX_READ_BYTES:
            break
        out.append(line)
        size += len(line)
    end = offset + len(out)
    total = f"{len(lines)}{'+' if truncated_file else ''}"
    header = f"[{path}: lines {offset + 1}-{end} of {total}]"
    if not chosen:
        return f"[{path}: no lines at offset {offset}; the file has {total} lines]"
    tail = ""
    if end < len(lines) or truncated_file:
        tail = f"\n[... more lines follow; read again with offset={end}]"
    return header + "\n" + "".join(out) + tail


def write_file(root: Path, path: str, content: str) -> str:
    """Create or overwrite a regular file (parent directories are made as needed)."""
    data = content.encode("utf-8")
    if len(data) > MAX_WRITE_BYTES:
        raise ToolError(f"error: content too large ({len(data)} bytes; at most {MAX_WRITE_BYTES})")
    target = resolve_inside(root, path, for_write=True)
    if target.is_dir():
        raise ToolError(f"error: {path} is a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    # The directories just made are inside (checked above); check again that nothing on
    # the way became a symlink meanwhile, then open without following one.
    resolve_inside(root, path, for_write=True)
    _write_nofollow(target, data)
    return f"wrote {len(data)} bytes to {path}"


def edit_file(root: Path, path: str, old: str, new: str) -> str:
    """Replace the one occurrence of ``old`` in the file with ``new``."""
    if not old:
        raise ToolError("error: old must not be empty (use write_file to create a file)")
    target = resolve_inside(root, path, for_write=True)
    try:
        text = target.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise ToolError(f"error: no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise ToolError(f"error: {path} is a directory") from exc
    except UnicodeDecodeError as exc:
        raise ToolError(f"error: {path} is not UTF-8 text; use write_file") from exc
    count = text.count(old)
    if count == 0:
        raise ToolError(f"error: old text not found in {path} (it must match exactly, whitespace included)")
    if count > 1:
        raise ToolError(
            f"error: old text occurs {count} times in {path}; include more context so it occurs exactly once"
        )
    _write_nofollow(target, text.replace(old, new, 1).encode("utf-8"))
    return f"edited {path}"


def _write_nofollow(target: Path, data: bytes) -> None:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # it is a symlink after all
            raise PathEscape(f"error: refusing to write through a symlink: {target.name}") from exc
        raise
    with os.fdopen(fd, "wb") as f:
        f.write(data)


_SECRET_SUFFIXES: Final = ("_API_KEY", "_API_TOKEN", "_SECRET_ACCESS_KEY", "_SESSION_TOKEN")


def command_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment a model's command gets: ours without the model's credentials."""
    return {
        k: v
        for k, v in env.items()
        if not k.startswith("FLOTA_LLM_") and not k.upper().endswith(_SECRET_SUFFIXES)
    }


def run_command(
    root: Path,
    command: str,
    timeout_s: float = DEFAULT_COMMAND_S,
    *,
    env: Mapping[str, str] | None = None,
    groups: set[int] | None = None,
) -> str:
    """Run ``command`` with bash in ``root``; its exit status and bounded output.

    The command leads its own process group; at ``timeout_s`` the group gets SIGTERM,
    then SIGKILL. ``groups`` (when given) tracks groups still to be killed at the end.
    """
    if not command.strip():
        raise ToolError("error: empty command")
    if "\0" in command:
        raise ToolError("error: command contains a NUL byte")
    timeout_s = max(0.1, min(float(timeout_s), MAX_COMMAND_S))
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [_SHELL, "-c", command],
                cwd=os.path.realpath(root),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            raise ToolError(f"error: cannot start {_SHELL}: {exc.strerror}") from exc
        if groups is not None:
            groups.add(proc.pid)
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc.pid)
            proc.wait()
        except BaseException:  # interrupted (SIGTERM to the agent): take the command down too
            kill_group(proc.pid)
            proc.wait()
            raise
        elapsed = time.monotonic() - started
        output = _bounded_output(out)
    if groups is not None and not _group_alive(proc.pid):
        groups.discard(proc.pid)  # nothing left in the background
    if timed_out:
        status = f"killed after the timeout of {timeout_s:g} s"
    elif proc.returncode < 0:
        status = f"killed by signal {-proc.returncode}"
    else:
        status = f"exit code {proc.returncode}"
    return f"[{status}, {elapsed:.1f} s]\n{output}" if output else f"[{status}, {elapsed:.1f} s, no output]"


def kill_group(group: int, grace_s: float = _KILL_GRACE_S) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after ``grace_s``."""
    if group <= 1:
        return
    try:
        os.killpg(group, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _bounded_output(out: Any) -> str:
    size = out.seek(0, os.SEEK_END)
    out.seek(0)
    if size <= MAX_COMMAND_OUTPUT:
        return str(out.read().decode("utf-8", errors="replace"))
    half = MAX_COMMAND_OUTPUT // 2
    head = out.read(half).decode("utf-8", errors="replace")
    out.seek(size - half)
    tail = out.read(half).decode("utf-8", errors="replace")
    return f"{head}\n[... {size - 2 * half} bytes of output cut ...]\n{tail}"


# --- schemas and dispatch ----------------------------------------------------------------


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
