"""Worktrees big enough for git's parallel checkout (over 100 files) are exact and run nothing."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from node_agent import workspace
from node_agent.workspace import Workspace
from tests.node_agent.test_workspace import evil_script, git, make_remote

pytestmark = pytest.mark.timeout(120)


def test_parallel_checkout_is_exact_and_runs_no_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workspace, "_CHECKOUT_WORKERS", 4)  # parallel even with one CPU
    markers = tmp_path / f"pwned-{uuid.uuid4().hex}"
    markers.mkdir()
    files = {f"d{i % 7}/s{i % 3}/f{i}.txt": f"line {i}\n".encode() * (i % 40 + 1) for i in range(300)}
    files[".gitattributes"] = b"* filter=evil\n"
    remote = make_remote(tmp_path, files)
    (remote.src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (remote.src / "run.sh").chmod(0o755)
    (remote.src / "link").symlink_to("d0/s0/f0.txt")
    git("add", "-A", cwd=remote.src)
    git("commit", "-q", "-m", "exec and link", cwd=remote.src)
    base = remote.push_base("refs/flota/base/r2")

    ws = Workspace(tmp_path / "node")
    first = ws.prepare(remote.url, "refs/flota/base/r2", base, "flota/r2/0", "r2.0.a1")
    # A job's agent names a smudge command in the shared mirror's config.
    mirror = ws.mirror_path(remote.url)
    git("config", "filter.evil.smudge", str(evil_script(tmp_path, markers, "filter", "cat")), cwd=mirror)
    git("config", "filter.evil.required", "true", cwd=mirror)
    second = ws.prepare(remote.url, "refs/flota/base/r2", base, "flota/r2/1", "r2.1.a1")

    for wt in (first, second):
        assert git("rev-parse", "HEAD", cwd=wt).strip() == base
        for name, content in files.items():
            assert (wt / name).read_bytes() == content, name
        assert os.access(wt / "run.sh", os.X_OK)
        assert os.readlink(wt / "link") == "d0/s0/f0.txt"
        assert git("status", "--porcelain", "--untracked-files=all", cwd=wt) == ""
    assert sorted(p.name for p in markers.iterdir()) == []
