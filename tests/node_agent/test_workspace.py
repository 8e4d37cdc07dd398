"""Workspace against real git: a source repo and a bare remote in tmp_path, no mocks."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from node_agent.errors import WorkspaceError
from node_agent.workspace import CommitOutcome, Workspace
from tests.gitenv import GIT_ENV

pytestmark = pytest.mark.timeout(120)

BASE_REF = "refs/flota/base/r1"
TRAILERS = {"Flota-Job": "r1.0", "Flota-Attempt": "r1.0.a1", "Flota-Node": "lab (n1)"}


def git(*args: str, cwd: Path, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


@dataclass
class Remote:
    src: Path  # a developer's clone
    bare: Path  # the remote the node fetches from and pushes to
    base: str  # commit at refs/flota/base/r1

    @property
    def url(self) -> str:
        return str(self.bare)

    def push_base(self, ref: str) -> str:
        git("push", "-q", str(self.bare), f"HEAD:{ref}", cwd=self.src)
        return git("rev-parse", "HEAD", cwd=self.src).strip()

    def show(self, rev_path: str) -> str:
        return git("show", rev_path, cwd=self.bare)

    def has(self, rev: str) -> bool:
        return subprocess.run(["git", "cat-file", "-e", rev], cwd=self.bare, env=GIT_ENV).returncode == 0


def make_remote(tmp_path: Path, files: dict[str, bytes] | None = None) -> Remote:
    src, bare = tmp_path / "src", tmp_path / "remote.git"
    git("init", "-q", "-b", "main", str(src), cwd=tmp_path)
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    files = files or {
        "a.txt": b"one\ntwo\nthree\n",
        "b.txt": b"x\ny\n",
        "dir/c.txt": b"c\n",
        "blob.bin": bytes(range(256)),
    }
    for name, content in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(content)
    git("add", "-A", cwd=src)
    git("commit", "-q", "-m", "base", cwd=src)
    remote = Remote(src, bare, "")
    remote.base = remote.push_base(BASE_REF)
    git("push", "-q", str(bare), "HEAD:refs/heads/main", cwd=src)
    return remote


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return make_remote(tmp_path)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "node")


def test_layout_is_private(ws: Workspace) -> None:
    for directory in (ws.root, ws.mirrors, ws.worktrees, ws.scratch_root):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_prepare_commit_and_push_round_trip(ws: Workspace, remote: Remote) -> None:
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a1")
    assert wt == ws.worktrees / "r1.0.a1"
    assert (wt / "a.txt").read_text() == "one\ntwo\nthree\n"
    assert git("symbolic-ref", "HEAD", cwd=wt).strip() == "refs/heads/flota/r1/0"

    (wt / "a.txt").write_text("one\nTWO\nthree\nfour\n")  # +2 -1
    (wt / "b.txt").unlink()  # -2
    (wt / "new.txt").write_text("n1\nn2\n")  # +2
    (wt / "more.bin").write_bytes(b"\0\1\2" * 100)  # binary: listed, 0/0
    outcome = ws.commit_and_push(wt, "flota/r1/0", "flota: do things\n\nstatus: success", TRAILERS)

    assert outcome == CommitOutcome(
        head_commit=outcome.head_commit,
        base_commit=remote.base,
        files_modified=("a.txt", "b.txt", "more.bin", "new.txt"),
        insertions=4,
        deletions=3,
        pushed=True,
        error="",
    )
    assert git("rev-parse", "refs/heads/flota/r1/0", cwd=remote.bare).strip() == outcome.head_commit
    assert git("rev-parse", "refs/heads/flota/r1/0^", cwd=remote.bare).strip() == remote.base
    assert remote.show("flota/r1/0:a.txt") == "one\nTWO\nthree\nfour\n"
    assert remote.show("flota/r1/0:new.txt") == "n1\nn2\n"
    assert not remote.has("flota/r1/0:b.txt")
    message = git("log", "-1", "--format=%B", "flota/r1/0", cwd=remote.bare)
    assert message.startswith("flota: do things\n\nstatus: success\n\n")
    parsed = subprocess.run(
        ["git", "interpret-trailers", "--parse"], input=message, capture_output=True, text=True, env=GIT_ENV
    ).stdout
    assert parsed.splitlines() == [f"{k}: {v}" for k, v in TRAILERS.items()]
    assert git("log", "-1", "--format=%an <%ae>|%cn <%ce>", "flota/r1/0", cwd=remote.bare).strip() == (
        "flota <flota@localhost>|flota <flota@localhost>"
    )


def test_a_job_that_changed_nothing_pushes_no_branch(ws: Workspace, remote: Remote) -> None:
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/1", "r1.1.a1")
    (wt / "scratch.txt").write_text("made, then removed\n")
    (wt / "scratch.txt").unlink()
    outcome = ws.commit_and_push(wt, "flota/r1/1", "nothing to do", {"Flota-Job": "r1.1"})
    assert outcome == CommitOutcome("", remote.base, (), 0, 0, pushed=False, error="", empty=True)
    assert not remote.has("refs/heads/flota/r1/1")
    assert git("rev-parse", "HEAD", cwd=wt).strip() == remote.base  # nor a local commit


def test_an_empty_commit_is_pushed_when_asked(ws: Workspace, remote: Remote) -> None:
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/1", "r1.1.a1")
    outcome = ws.commit_and_push(
        wt, "flota/r1/1", "nothing to do", {"Flota-Job": "r1.1"}, author="bot <b@x>", allow_empty=True
    )
    assert (outcome.files_modified, outcome.insertions, outcome.deletions, outcome.pushed) == ((), 0, 0, True)
    assert not outcome.empty and outcome.head_commit != remote.base
    assert git("log", "-1", "--format=%an", "flota/r1/1", cwd=remote.bare).strip() == "bot"
    assert git("rev-parse", "flota/r1/1^", cwd=remote.bare).strip() == remote.base


def test_what_counts_as_a_change_is_the_tree_against_the_base(ws: Workspace, remote: Remote) -> None:
    """The agent's own commits count: one that committed its change has changed something;
    one that committed a change and its revert has not."""
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/3", "r1.3.a1")
    (wt / "agent.txt").write_text("kept\n")
    git("add", "agent.txt", cwd=wt)
    git("commit", "-q", "-m", "agent's own commit", cwd=wt)
    outcome = ws.commit_and_push(wt, "flota/r1/3", "result", TRAILERS)
    assert (outcome.files_modified, outcome.pushed, outcome.empty) == (("agent.txt",), True, False)

    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/4", "r1.4.a1")
    (wt / "agent.txt").write_text("gone again\n")
    git("add", "agent.txt", cwd=wt)
    git("commit", "-q", "-m", "try", cwd=wt)
    git("rm", "-q", "agent.txt", cwd=wt)
    git("commit", "-q", "-m", "revert", cwd=wt)
    outcome = ws.commit_and_push(wt, "flota/r1/4", "result", TRAILERS)
    assert (outcome.files_modified, outcome.pushed, outcome.empty) == ((), False, True)
    assert not remote.has("refs/heads/flota/r1/4")


def test_an_agents_own_files_are_not_its_work_unless_the_base_tracks_them(
    tmp_path: Path, ws: Workspace
) -> None:
    remote = make_remote(tmp_path, {"a.txt": b"a\n", ".architect/config.yaml": b"mine\n"})
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/5", "r1.5.a1")
    (wt / ".architect" / "sessions").mkdir()
    (wt / ".architect" / "sessions" / "s1.json").write_text("{}")
    (wt / ".architect" / "config.yaml").write_text("changed by the agent\n")  # the user's file
    (wt / ".aider.chat.history.md").write_text("chat\n")
    (wt / ".aider.tags.cache.v3").mkdir()
    (wt / ".aider.tags.cache.v3" / "cache.db").write_bytes(b"\0")
    (wt / ".architect" / "*").write_text("named like a glob\n")  # dropped as a name, not a pattern
    (wt / "a.txt").write_text("the work\n")
    outcome = ws.commit_and_push(wt, "flota/r1/5", "result", TRAILERS, ignore=(".architect", ".aider*"))
    assert outcome.files_modified == (".architect/config.yaml", "a.txt")
    assert remote.show("flota/r1/5:.architect/config.yaml") == "changed by the agent\n"
    assert not remote.has("flota/r1/5:.architect/sessions/s1.json")
    # Nothing but the agent's own files: nothing changed.
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/6", "r1.6.a1")
    (wt / ".aider.chat.history.md").write_text("chat\n")
    outcome = ws.commit_and_push(wt, "flota/r1/6", "result", TRAILERS, ignore=(".architect", ".aider*"))
    assert (outcome.pushed, outcome.empty) == (False, True)


def test_commits_made_by_the_agent_count_from_base(ws: Workspace, remote: Remote) -> None:
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/2", "r1.2.a1")
    (wt / "agent.txt").write_text("1\n2\n3\n")
    git("add", "agent.txt", cwd=wt)
    git("commit", "-q", "-m", "agent's own commit", cwd=wt)
    (wt / "later.txt").write_text("x\n")
    outcome = ws.commit_and_push(wt, "flota/r1/2", "result", TRAILERS)
    assert outcome.files_modified == ("agent.txt", "later.txt")
    assert outcome.insertions == 4
    assert remote.show("flota/r1/2:agent.txt") == "1\n2\n3\n"


def test_warm_prepare_reuses_the_mirror_and_sees_a_new_commit(ws: Workspace, remote: Remote) -> None:
    ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a1")
    (remote.src / "fresh.txt").write_text("fresh\n")
    git("add", "fresh.txt", cwd=remote.src)
    git("commit", "-q", "-m", "next", cwd=remote.src)
    new_base = remote.push_base("refs/flota/base/r2")

    started = time.perf_counter()
    wt = ws.prepare(remote.url, "refs/flota/base/r2", new_base, "flota/r2/0", "r2.0.a1")
    elapsed = time.perf_counter() - started

    assert [p.name for p in ws.mirrors.iterdir()] == [ws.mirror_path(remote.url).name]
    assert (wt / "fresh.txt").read_text() == "fresh\n"
    assert git("rev-parse", "HEAD", cwd=wt).strip() == new_base
    assert elapsed < 5.0  # ~20 ms measured; the bound only catches a hang


def test_prepare_by_commit_without_a_base_ref(ws: Workspace, remote: Remote) -> None:
    wt = ws.prepare(remote.url, "", remote.base, "flota/rx/0", "rx.0.a1")
    assert git("rev-parse", "HEAD", cwd=wt).strip() == remote.base


def test_missing_base_commit_is_a_clear_error(ws: Workspace, remote: Remote) -> None:
    missing = "0123456789abcdef" * 2 + "01234567"
    with pytest.raises(WorkspaceError) as err:
        ws.prepare(remote.url, BASE_REF, missing, "flota/r1/0", "r1.0.a1")
    assert str(err.value) == f"commit {missing} is not in {BASE_REF} of {remote.url}"
    assert not (ws.worktrees / "r1.0.a1").exists()


def test_missing_base_ref_is_a_clear_error(ws: Workspace, remote: Remote) -> None:
    with pytest.raises(WorkspaceError) as err:
        ws.prepare(remote.url, "refs/flota/base/nope", "f" * 40, "b", "k")
    assert str(err.value) == (
        f"cannot fetch refs/flota/base/nope from {remote.url}: couldn't find remote ref refs/flota/base/nope"
    )


def test_unreachable_remote_is_a_one_line_error(ws: Workspace, tmp_path: Path) -> None:
    url = str(tmp_path / "nowhere.git")
    with pytest.raises(WorkspaceError) as err:
        ws.prepare(url, BASE_REF, "a" * 40, "flota/r1/0", "r1.0.a1")
    message = str(err.value)
    assert message.startswith(f"cannot fetch {BASE_REF} from {url}: ")
    assert "\n" not in message and "Traceback" not in message


def test_failed_push_keeps_the_commit_locally(ws: Workspace, remote: Remote, tmp_path: Path) -> None:
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a1")
    (wt / "work.txt").write_text("precious\n")
    shutil.move(remote.bare, tmp_path / "moved.git")

    outcome = ws.commit_and_push(wt, "flota/r1/0", "result", TRAILERS)

    assert not outcome.pushed
    assert outcome.error.startswith(f"cannot push flota/r1/0 to {remote.url}: ")
    assert "\n" not in outcome.error
    assert outcome.files_modified == ("work.txt",)
    mirror = ws.mirror_path(remote.url)
    branch_tip = git("--git-dir", str(mirror), "rev-parse", "refs/heads/flota/r1/0", cwd=mirror).strip()
    assert branch_tip == outcome.head_commit


def test_retry_resets_the_branch_but_never_rewrites_the_remote(ws: Workspace, remote: Remote) -> None:
    first = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a1")
    (first / "x.txt").write_text("first\n")
    pushed = ws.commit_and_push(first, "flota/r1/0", "first", TRAILERS)
    assert pushed.pushed
    assert ws.remove("r1.0.a1")

    again = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a2")
    assert not (again / "x.txt").exists()  # the local branch was reset to base
    (again / "x.txt").write_text("second\n")
    outcome = ws.commit_and_push(again, "flota/r1/0", "second", TRAILERS)

    assert not outcome.pushed
    assert "rejected" in outcome.error
    assert remote.show("flota/r1/0:x.txt") == "first\n"
    mirror = ws.mirror_path(remote.url)
    reflog = git(
        "--git-dir", str(mirror), "reflog", "show", "--format=%H", "refs/heads/flota/r1/0", cwd=mirror
    )
    assert pushed.head_commit in reflog.split()  # the reset tip is still recoverable


def test_same_job_key_twice_is_refused(ws: Workspace, remote: Remote) -> None:
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a1")
    (wt / "unsaved.txt").write_text("work\n")
    with pytest.raises(WorkspaceError, match="already exists; remove it first"):
        ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/9", "r1.0.a1")
    assert (wt / "unsaved.txt").exists()


def test_parallel_prepares_share_one_mirror(ws: Workspace, remote: Remote) -> None:
    errors: list[BaseException] = []

    def prepare(i: int) -> None:
        try:
            ws.prepare(remote.url, BASE_REF, remote.base, f"flota/r1/{i}", f"r1.{i}.a1")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(list(ws.mirrors.iterdir())) == 1
    assert sorted(p.name for p in ws.worktrees.iterdir()) == [f"r1.{i}.a1" for i in range(6)]


@pytest.mark.parametrize("job_key", ["../x", "..", ".", "a/b", "", "x" * 101, "a b"])
def test_job_keys_that_could_escape_are_rejected(ws: Workspace, remote: Remote, job_key: str) -> None:
    with pytest.raises(WorkspaceError, match="invalid job key"):
        ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/0", job_key)
    with pytest.raises(WorkspaceError, match="invalid job key"):
        ws.scratch(job_key)
    with pytest.raises(WorkspaceError, match="invalid job key"):
        ws.remove(job_key)
    assert list(ws.worktrees.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "base_ref", "branch", "fragment"),
    [
        ("--upload-pack=touch /tmp/x", BASE_REF, "b", "invalid repository URL"),
        ("relative/remote.git", BASE_REF, "b", "a local path must be absolute"),
        (None, "--exec=x", "b", "invalid base ref"),
        (None, "heads/main", "b", "must start with refs/"),
        (None, BASE_REF, "-f", "invalid branch"),
        (None, BASE_REF, "a/../b", "invalid branch"),
        (None, BASE_REF, "a.lock", "invalid branch"),
    ],
)
def test_option_like_arguments_are_rejected(
    ws: Workspace, remote: Remote, url: str | None, base_ref: str, branch: str, fragment: str
) -> None:
    with pytest.raises(WorkspaceError, match=fragment):
        ws.prepare(url or remote.url, base_ref, remote.base, branch, "k1")


def test_remove_keeps_branches_in_mirror_and_remote(ws: Workspace, remote: Remote) -> None:
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a1")
    (wt / "r.txt").write_text("result\n")
    outcome = ws.commit_and_push(wt, "flota/r1/0", "result", TRAILERS)
    mirror = ws.mirror_path(remote.url)

    assert ws.remove("r1.0.a1") is True
    assert not wt.exists()
    assert str(wt) not in git("--git-dir", str(mirror), "worktree", "list", cwd=mirror)
    assert git("rev-parse", "refs/heads/flota/r1/0", cwd=remote.bare).strip() == outcome.head_commit
    assert git("--git-dir", str(mirror), "rev-parse", "refs/heads/flota/r1/0", cwd=mirror).strip() == (
        outcome.head_commit
    )
    assert ws.remove("r1.0.a1") is False


def test_remove_run_removes_that_runs_jobs_except_kept(ws: Workspace, remote: Remote) -> None:
    for key in ("r1.0.a1", "r1.1.a1", "r1.2.a1", "r10.0.a1"):
        ws.prepare(remote.url, BASE_REF, remote.base, f"flota/{key}", key)
    ws.scratch("r1.3.a1")
    (ws.worktrees / "r1.1.a1" / "read-only").mkdir(mode=0o500)

    assert ws.remove_run("r1", keep={"r1.2.a1"}) == 3
    assert sorted(p.name for p in ws.worktrees.iterdir()) == ["r1.2.a1", "r10.0.a1"]
    assert list(ws.scratch_root.iterdir()) == []
    assert remote.has("refs/flota/base/r1")
    with pytest.raises(WorkspaceError, match="invalid job key prefix"):
        ws.remove_worktrees("")


def test_remove_run_refs_deletes_only_that_runs_refs_from_every_mirror(
    ws: Workspace, remote: Remote, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = make_remote(tmp_path / "other")  # a second repository: a second mirror
    for key, branch in (("r1.0.a1", "flota/r1/0"), ("r1.0.a2", "flota/r1/0-a2"), ("r10.0.a1", "flota/r10/0")):
        wt = ws.prepare(remote.url, BASE_REF, remote.base, branch, key)
        (wt / "result.txt").write_text(f"{key}\n")  # a change: a job that made none pushes nothing
        ws.commit_and_push(wt, branch, "result", TRAILERS)
    ws.prepare(other.url, BASE_REF, other.base, "flota/r1/1", "r1.1.a1")
    assert ws.find_resume(remote.url, remote.base, ["flota/r1/0"]) is not None  # refs/flota/resume/...
    ws.prepare(other.url, BASE_REF, other.base, "flota/r10/1", "r10.1.a1")
    assert ws.remove_run("r1") == 3

    mirrors = [ws.mirror_path(remote.url), ws.mirror_path(other.url)]
    refs = [git("--git-dir", str(m), "for-each-ref", "--format=%(refname)", cwd=m).split() for m in mirrors]
    assert "refs/flota/resume/flota/r1/0" in refs[0] and "refs/heads/flota/r1/1" in refs[1]
    assert ws.remove_run_refs("r1") == 6  # 2 branches, base and resume ref; 1 branch and base
    left = [git("--git-dir", str(m), "for-each-ref", "--format=%(refname)", cwd=m).split() for m in mirrors]
    assert left == [["refs/heads/flota/r10/0"], ["refs/heads/flota/r10/1"]]
    assert ws.remove_run_refs("r1") == 0
    assert remote.has("refs/heads/flota/r1/0")  # the remote's are not the node's to delete
    for bad in ("r1.0", "-x", "..", ""):
        with pytest.raises(WorkspaceError, match="invalid run id"):
            ws.remove_run_refs(bad)


def test_remove_survives_a_worktree_whose_git_link_is_gone(ws: Workspace, remote: Remote) -> None:
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a1")
    (wt / ".git").unlink()
    assert ws.remove("r1.0.a1")
    assert not wt.exists()
    mirror = ws.mirror_path(remote.url)
    assert not (mirror / "worktrees" / "r1.0.a1").exists()


def test_scratch_is_fresh_and_empty(ws: Workspace) -> None:
    path = ws.scratch("r9.0.a1")
    assert path == ws.scratch_root / "r9.0.a1" and list(path.iterdir()) == []
    (path / "junk").write_text("x")
    assert list(ws.scratch("r9.0.a1").iterdir()) == []
    assert ws.remove("r9.0.a1") and not path.exists()


def test_new_scratch_is_made_only_if_it_did_not_exist(ws: Workspace) -> None:
    path = ws.new_scratch("r9.1.a1")
    assert path == ws.scratch_root / "r9.1.a1" and list(path.iterdir()) == []
    assert oct(path.stat().st_mode & 0o777) == "0o700"
    (path / "junk").write_text("x")
    assert ws.new_scratch("r9.1.a1") is None  # a leftover: scratch() empties it
    assert (path / "junk").exists()
    with pytest.raises(WorkspaceError, match="invalid job key"):
        ws.new_scratch("../x")


def test_commit_uses_our_mirror_even_if_the_agent_rewires_dot_git(
    ws: Workspace, remote: Remote, tmp_path: Path
) -> None:
    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a1")
    decoy = tmp_path / "decoy"
    git("init", "-q", str(decoy), cwd=tmp_path)
    (wt / ".git").write_text(f"gitdir: {decoy / '.git'}\n")
    (wt / "r.txt").write_text("result\n")
    outcome = ws.commit_and_push(wt, "flota/r1/0", "result", TRAILERS)
    assert outcome.pushed and outcome.files_modified == ("r.txt",)
    assert remote.show("flota/r1/0:r.txt") == "result\n"


def test_commit_refuses_a_path_outside_the_workspace(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="is not a worktree of"):
        ws.commit_and_push(tmp_path, "b", "m", {})
    with pytest.raises(WorkspaceError, match="is not a worktree of"):
        ws.commit_and_push(ws.worktrees / "nothing-here", "b", "m", {})


# ----- hostile content --------------------------------------------------------------------


def evil_script(tmp_path: Path, markers: Path, name: str, body: str = "") -> Path:
    script = tmp_path / "evil" / name
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!/bin/sh\ntouch {markers}/{name}\n{body}\n")
    script.chmod(0o755)
    return script


HOOKS = (
    "post-checkout",
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "pre-push",
    "reference-transaction",
    "post-index-change",
    "pre-receive",
    "update",
    "post-receive",
    "post-update",
    "push-to-checkout",
)


def plant_hooks(hooks_dir: Path, markers: Path) -> None:
    hooks_dir.mkdir(parents=True, exist_ok=True)
    for hook in HOOKS:
        path = hooks_dir / hook
        path.write_text(f"#!/bin/sh\ntouch {markers}/hook-{hook}\ncat >/dev/null 2>&1\nexit 0\n")
        path.chmod(0o755)


def test_hostile_repo_and_tampered_mirror_run_nothing(ws: Workspace, tmp_path: Path) -> None:
    markers = tmp_path / f"pwned-{uuid.uuid4().hex}"
    markers.mkdir()
    # The base commit asks for a filter driver; only (tampered) config can name its command.
    remote = make_remote(tmp_path, {"code.py": b"print(1)\n", ".gitattributes": b"* filter=evil diff=evil\n"})
    for repo_git_dir in (remote.src / ".git", remote.bare):
        git("config", "core.fsmonitor", f"touch {markers}/remote-fsmonitor", cwd=repo_git_dir)
        plant_hooks(repo_git_dir / "hooks", markers)

    wt = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a1")
    (wt / "code.py").write_text("print(2)\n")
    first = ws.commit_and_push(wt, "flota/r1/0", "result", TRAILERS)
    assert first.pushed, first.error
    assert sorted(p.name for p in markers.iterdir()) == []

    # Now what a job's agent (same user) could do to the node's mirror.
    mirror = ws.mirror_path(remote.url)
    evil_hooks = tmp_path / "evil-hooks"
    plant_hooks(evil_hooks, markers)
    plant_hooks(mirror / "hooks", markers)
    fsmonitor = evil_script(tmp_path, markers, "fsmonitor")
    filt = evil_script(tmp_path, markers, "filter", "cat")
    gpg = evil_script(tmp_path, markers, "gpg")
    helper = evil_script(tmp_path, markers, "credential")
    upload_pack = evil_script(tmp_path, markers, "upload-pack", 'exec git upload-pack "$@"')
    receive_pack = evil_script(tmp_path, markers, "receive-pack", 'exec git receive-pack "$@"')
    tampered = {
        "core.fsmonitor": str(fsmonitor),
        "core.hooksPath": str(evil_hooks),
        "filter.evil.clean": str(filt),
        "filter.evil.smudge": str(filt),
        "filter.evil.required": "true",
        "diff.evil.textconv": str(filt),
        "diff.external": str(filt),
        "credential.helper": str(helper),
        "core.askPass": str(helper),
        "core.sshCommand": str(helper),
        "core.alternateRefsCommand": str(helper),
        "commit.gpgSign": "true",
        "gpg.program": str(gpg),
        "remote.origin.uploadpack": str(upload_pack),
        "remote.origin.receivepack": str(receive_pack),
    }
    for key, value in tampered.items():
        git("config", key, value, cwd=mirror)
    git("config", "extensions.worktreeConfig", "true", cwd=mirror)

    wt2 = ws.prepare(remote.url, BASE_REF, remote.base, "flota/r1/1", "r1.1.a1")
    # Per-worktree config is read too once the extension is on.
    (mirror / "worktrees" / "r1.1.a1" / "config.worktree").write_text(
        f"[core]\n\tfsmonitor = {fsmonitor}\n\thooksPath = {evil_hooks}\n"
    )
    (wt2 / "code.py").write_text("print(3)\n")
    (wt2 / "new.py").write_text("x = 1\n")
    second = ws.commit_and_push(wt2, "flota/r1/1", "result", TRAILERS)
    assert second.pushed, second.error
    assert second.files_modified == ("code.py", "new.py")
    assert remote.show("flota/r1/1:code.py") == "print(3)\n"  # no filter touched the content
    assert sorted(p.name for p in markers.iterdir()) == []

    # Control: the same tampering fires for plain git, so the assertions above mean something.
    # (With the extension on, plain git takes the mirror's core.bare for the worktree.)
    git("config", "--unset", "extensions.worktreeConfig", cwd=mirror)
    (wt2 / "control.py").write_text("y = 2\n")
    git("add", "-A", cwd=wt2)
    fired = {p.name for p in markers.iterdir()}
    assert {"fsmonitor", "filter", "hook-post-index-change"} & fired


def test_file_url(ws: Workspace, remote: Remote) -> None:
    url = f"file://{remote.bare}"
    wt = ws.prepare(url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a1")
    (wt / "f.txt").write_text("via file://\n")
    assert ws.commit_and_push(wt, "flota/r1/0", "result", TRAILERS).pushed
    assert remote.show("flota/r1/0:f.txt") == "via file://\n"


def test_ssh_url_uses_the_operators_ssh_command(tmp_path: Path, remote: Remote) -> None:
    # A stand-in for ssh that runs the remote command locally and logs it.
    log = tmp_path / "ssh.log"
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text(
        "#!/bin/sh\n"
        "while [ $# -gt 0 ]; do\n"
        '  case "$1" in -G) exit 0;; -o|-p) shift 2;; -*) shift;; *) break;; esac\n'
        "done\n"
        f'host="$1"; shift; echo "$host $*" >> {log}\n'
        'exec sh -c "$*"\n'
    )
    fake_ssh.chmod(0o755)
    ws = Workspace(
        tmp_path / "node", environ={**os.environ, "GIT_SSH_COMMAND": str(fake_ssh), "GIT_DIR": "/x"}
    )
    url = f"ssh://buildbox{remote.bare}"
    wt = ws.prepare(url, BASE_REF, remote.base, "flota/r1/0", "r1.0.a1")
    (wt / "s.txt").write_text("via ssh\n")
    assert ws.commit_and_push(wt, "flota/r1/0", "result", TRAILERS).pushed
    assert remote.show("flota/r1/0:s.txt") == "via ssh\n"
    # Over ssh the server's own command stays the plain default.
    assert log.read_text().splitlines() == [
        f"buildbox git-upload-pack '{remote.bare}'",
        f"buildbox git-receive-pack '{remote.bare}'",
    ]


def test_allow_list_refuses_other_remotes(tmp_path: Path) -> None:
    """With an allow-list, a job's repository must match one of its globs: nothing is
    fetched (not even a mirror made) from anywhere else."""
    allowed_dir = tmp_path / "allowed"
    allowed_dir.mkdir()
    ws = Workspace(tmp_path / "ws", allow_remotes=[f"{allowed_dir}/*"])
    for url in ("/srv/other.git", f"{allowed_dir}/../escape.git x", "file:///etc"):
        with pytest.raises(WorkspaceError, match="is not on this node's allow-list"):
            ws.prepare(url, "", "a" * 40, "flota/r1/1", "r1.1.a1")
    assert list(ws.mirrors.iterdir()) == []
