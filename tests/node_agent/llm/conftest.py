from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """A worktree and, next to it, an outside directory holding a secret."""
    worktree = tmp_path / "wt"
    outside = tmp_path / "outside"
    worktree.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP-SECRET\n")
    (worktree / "a.txt").write_text("alpha\nbeta\ngamma\n")
    (worktree / "sub").mkdir()
    (worktree / "sub" / "b.py").write_text("x = 1\n")
    return worktree, outside
