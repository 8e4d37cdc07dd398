"""The llm agent's file tools, confined to one job's worktree.

Every path a model names goes through :func:`resolve_inside`: absolute paths, ``..``
that climbs out, and symlinks (the target itself or any parent) that lead outside the
root are refused, and nothing is ever written through a symlink.

Error handling: the tools raise :class:`ToolError` (or its subclass :class:`PathEscape`)
for anything the model did wrong or the file system refused, with a message for the
model; ``OSError`` passes through. :meth:`tools.Toolbox.call` turns both into text.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

from node_agent.agents.llm.errors import PathEscape, ToolError

__all__ = [
    "DEFAULT_READ_LINES",
    "MAX_LIST_ENTRIES",
    "MAX_READ_BYTES",
    "MAX_WRITE_BYTES",
    "edit_file",
    "list_files",
    "read_file",
    "resolve_inside",
    "write_file",
]

MAX_READ_BYTES: Final = 32_000  # per read_file answer
DEFAULT_READ_LINES: Final = 400
MAX_LIST_ENTRIES: Final = 500
MAX_WRITE_BYTES: Final = 2_000_000
_SKIP_DIRS: Final = frozenset({".git"})


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
