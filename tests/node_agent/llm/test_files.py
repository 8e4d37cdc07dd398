"""The llm agent's file tools on real files: confinement to the worktree first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node_agent.agents.llm.errors import PathEscape, ToolError
from node_agent.agents.llm.files import (
    MAX_READ_BYTES,
    edit_file,
    list_files,
    read_file,
    resolve_inside,
    write_file,
)

pytestmark = pytest.mark.timeout(60)


# --- resolve_inside ------------------------------------------------------------------------


def test_resolve_inside_accepts_paths_inside(box: tuple[Path, Path]) -> None:
    wt, _ = box
    real = Path(os.path.realpath(wt))
    assert resolve_inside(wt, "a.txt") == real / "a.txt"
    assert resolve_inside(wt, ".") == real
    assert resolve_inside(wt, "sub/../a.txt") == real / "a.txt"
    assert resolve_inside(wt, "./sub/b.py") == real / "sub" / "b.py"
    assert resolve_inside(wt, "new/dir/file.txt", for_write=True) == real / "new" / "dir" / "file.txt"
    (wt / "inner").symlink_to("sub")  # a symlink that stays inside is fine for reading
    assert resolve_inside(wt, "inner/b.py") == real / "inner" / "b.py"


@pytest.mark.parametrize("path", ["../x", "..", "sub/../../x", "/etc/passwd", "/", "", "  ", "a\0b"])
def test_resolve_inside_refuses_escapes(box: tuple[Path, Path], path: str) -> None:
    wt, _ = box
    with pytest.raises(PathEscape, match="^error: "):
        resolve_inside(wt, path)


def test_resolve_inside_refuses_symlinks_leading_out(box: tuple[Path, Path]) -> None:
    wt, outside = box
    (wt / "out_dir").symlink_to(outside)
    (wt / "out_file").symlink_to(outside / "secret.txt")
    (wt / "dangling").symlink_to(outside / "not-yet")
    (wt / "sub" / "up").symlink_to("../..")  # relative, climbing out
    for path in [
        "out_dir",
        "out_dir/secret.txt",
        "out_dir/new.txt",
        "out_file",
        "dangling",
        "sub/up/outside",
    ]:
        with pytest.raises(PathEscape, match="path escapes the worktree"):
            resolve_inside(wt, path)
        with pytest.raises(PathEscape, match="path escapes the worktree"):
            resolve_inside(wt, path, for_write=True)


def test_resolve_inside_refuses_writing_through_any_symlink(box: tuple[Path, Path]) -> None:
    wt, _ = box
    (wt / "alias").symlink_to("a.txt")
    assert resolve_inside(wt, "alias") == Path(os.path.realpath(wt)) / "alias"  # reading is fine
    with pytest.raises(PathEscape, match="write through a symlink"):
        resolve_inside(wt, "alias", for_write=True)


def test_resolve_inside_a_root_reached_through_a_symlink(box: tuple[Path, Path], tmp_path: Path) -> None:
    wt, _ = box
    (tmp_path / "wt_link").symlink_to(wt)
    assert resolve_inside(tmp_path / "wt_link", "a.txt") == Path(os.path.realpath(wt)) / "a.txt"
    with pytest.raises(PathEscape):
        resolve_inside(tmp_path / "wt_link", "../outside/secret.txt")


# --- the tools on real files ----------------------------------------------------------------


def test_list_files(box: tuple[Path, Path]) -> None:
    wt, outside = box
    (wt / ".git").mkdir()
    (wt / ".git" / "HEAD").write_text("ref")
    (wt / "out_dir").symlink_to(outside)
    listing = list_files(wt).splitlines()
    assert "a.txt" in listing and "sub/" in listing and "sub/b.py" in listing
    assert not any(line.startswith(".git") for line in listing)
    assert not any("secret" in line for line in listing)  # symlinked directories are not followed
    assert list_files(wt, "sub") == "sub/b.py"
    with pytest.raises(ToolError, match="not a directory"):
        list_files(wt, "a.txt")
    with pytest.raises(ToolError, match="no such directory"):
        list_files(wt, "nope")


def test_read_file_pages_and_bounds(box: tuple[Path, Path]) -> None:
    wt, _ = box
    assert read_file(wt, "a.txt") == "[a.txt: lines 1-3 of 3]\nalpha\nbeta\ngamma\n"
    page = read_file(wt, "a.txt", offset=1, limit=1)
    assert page.startswith("[a.txt: lines 2-2 of 3]\nbeta\n") and "offset=2" in page
    assert "no lines at offset 10" in read_file(wt, "a.txt", offset=10)
    (wt / "big.txt").write_text("".join(f"line {i} " + "x" * 90 + "\n" for i in range(5000)))
    big = read_file(wt, "big.txt", limit=5000)
    assert len(big) <= MAX_READ_BYTES + 200 and "read again with offset=" in big
    (wt / "bin").write_bytes(b"\0\1\2")
    with pytest.raises(ToolError, match="binary"):
        read_file(wt, "bin")
    with pytest.raises(ToolError, match="no such file"):
        read_file(wt, "missing.txt")
    with pytest.raises(ToolError, match="directory"):
        read_file(wt, "sub")


def test_write_file_creates_parents_and_overwrites(box: tuple[Path, Path]) -> None:
    wt, _ = box
    assert write_file(wt, "new/deep/c.txt", "hello\n") == "wrote 6 bytes to new/deep/c.txt"
    assert (wt / "new" / "deep" / "c.txt").read_text() == "hello\n"
    write_file(wt, "a.txt", "replaced")
    assert (wt / "a.txt").read_text() == "replaced"
    with pytest.raises(ToolError, match="directory"):
        write_file(wt, "sub", "x")


def test_edit_file_exact_once(box: tuple[Path, Path]) -> None:
    wt, _ = box
    assert edit_file(wt, "a.txt", "beta\n", "BETA\n") == "edited a.txt"
    assert (wt / "a.txt").read_text() == "alpha\nBETA\ngamma\n"
    (wt / "dup.txt").write_text("x x\n")
    with pytest.raises(ToolError, match="occurs 2 times"):
        edit_file(wt, "dup.txt", "x", "y")
    with pytest.raises(ToolError, match="not found"):
        edit_file(wt, "a.txt", "delta", "y")
    with pytest.raises(ToolError, match="must not be empty"):
        edit_file(wt, "a.txt", "", "y")
    with pytest.raises(ToolError, match="no such file"):
        edit_file(wt, "missing.txt", "a", "b")
    assert (wt / "dup.txt").read_text() == "x x\n"
