"""What the planner sees of a repository: its file tree and its key files, within a cap.

The tree is the tracked files (`git ls-files`), cut at MAX_PATHS; the key files (a
README, the build files, the docs index) follow in that order, each cut at PER_FILE
characters, until the whole reaches the cap the user chose (`--context-chars`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["KEY_FILES", "MAX_PATHS", "PER_FILE", "repo_context"]

MAX_PATHS = 2000
PER_FILE = 8000
KEY_FILES = (
    "README.md",
    "README.rst",
    "README",
    "pyproject.toml",
    "setup.py",
    "package.json",
    "Cargo.toml",
    "go.mod",
    "Makefile",
    "docs/index.md",
    "docs/architecture.md",
)


def repo_context(root: Path, paths: Sequence[str], cap: int) -> str:
    """The repository at `root` (its tracked `paths`) as text for the planner, at most
    `cap` characters."""
    shown = list(paths[:MAX_PATHS])
    tree = "\n".join(shown) + (
        f"\n... and {len(paths) - MAX_PATHS} more files" if len(paths) > MAX_PATHS else ""
    )
    parts = [f"## The repository's files\n{tree or '(none tracked yet)'}"]
    used = len(parts[0])
    tracked = set(paths)
    for name in KEY_FILES:
        if name not in tracked or used >= cap:
            continue
        try:
            text = (root / name).read_text(errors="replace")
        except OSError:
            continue
        room = min(PER_FILE, cap - used - len(name) - 20)
        if room <= 0:
            break
        cut = text[:room] + ("\n[... cut]" if len(text) > room else "")
        parts.append(f"## {name}\n{cut}")
        used += len(parts[-1])
    return "\n\n".join(parts)[:cap]
