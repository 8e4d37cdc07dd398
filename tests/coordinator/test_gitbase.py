"""coordinator/gitbase.py against real git: a developer's repo and a bare remote in tmp_path."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import git
import pytest

from coordinator.errors import RepoError
from coordinator.gitbase import delete_refs, list_run_refs, push_base, resolve_url, run_of_ref

pytestmark = pytest.mark.timeout(120)

IDENTITY = {
    "GIT_AUTHOR_NAME": "dev",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "dev",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
}


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_git(monkeypatch)


def isolate_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither our git nor GitPython's may depend on the machine's git config."""
    for key in [k for k in os.environ if k.startswith("GIT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)


def sh(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **IDENTITY}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


@dataclass
class Setup:
    src: Path
    bare: Path

    def head(self) -> str:
        return sh("rev-parse", "HEAD", cwd=self.src).strip()

    def remote_ref(self, ref: str) -> str:
        return sh("rev-parse", "--verify", "--quiet", ref, cwd=self.bare).strip()

    def write(self, name: str, text: str) -> None:
        (self.src / name).parent.mkdir(parents=True, exist_ok=True)
        (self.src / name).write_text(text)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return make_setup(tmp_path)


def make_setup(tmp_path: Path) -> Setup:
    src, bare = tmp_path / "src", tmp_path / "remote.git"
    sh("init", "-q", "-b", "main", str(src), cwd=tmp_path)
    sh("init", "-q", "--bare", str(bare), cwd=tmp_path)
    s = Setup(src, bare)
    s.write("a.txt", "one\n")
    s.write("b.txt", "two\n")
    s.write("dir/c.txt", "three\n")
    s.write(".gitignore", "*.log\nbuild/\n")
    sh("add", "-A", cwd=src)
    sh("commit", "-q", "-m", "base", cwd=src)
    sh("remote", "add", "origin", "../remote.git", cwd=src)  # relative, as git allows
    return s


# --- pushing a committed base ---------------------------------------------------------------


def test_pushes_head_as_the_run_base(setup: Setup) -> None:
    repo = push_base(str(setup.src), "origin", "", False, "r1")
    assert repo.url == str(setup.bare.resolve())
    assert repo.base_ref == "refs/flota/base/r1"
    assert repo.base_commit == setup.head()
    assert setup.remote_ref("refs/flota/base/r1") == setup.head()


def test_default_remote_is_origin(setup: Setup) -> None:
    assert push_base(str(setup.src), "", "", False, "r1").url == str(setup.bare.resolve())


def test_runs_get_their_own_refs(setup: Setup) -> None:
    first = setup.head()
    push_base(str(setup.src), "origin", "", False, "r1")
    setup.write("a.txt", "changed\n")
    sh("commit", "-q", "-am", "next", cwd=setup.src)
    push_base(str(setup.src), "origin", "", False, "r2")
    assert setup.remote_ref("refs/flota/base/r1") == first
    assert setup.remote_ref("refs/flota/base/r2") == setup.head()


@pytest.mark.parametrize("kind", ["branch", "lightweight-tag", "annotated-tag", "short-sha", "head-parent"])
def test_ref_selects_the_base(setup: Setup, kind: str) -> None:
    old = setup.head()
    setup.write("a.txt", "newer\n")
    sh("commit", "-q", "-am", "newer", cwd=setup.src)
    ref = {
        "branch": "old-branch",
        "lightweight-tag": "v1",
        "annotated-tag": "v1a",
        "short-sha": old[:10],
        "head-parent": "HEAD~1",
    }[kind]
    sh("branch", "old-branch", old, cwd=setup.src)
    sh("tag", "v1", old, cwd=setup.src)
    sh("tag", "-a", "-m", "release", "v1a", old, cwd=setup.src)

    repo = push_base(str(setup.src), "origin", ref, False, "r1")
    assert repo.base_commit == old  # a commit, never a tag object
    assert setup.remote_ref("refs/flota/base/r1") == old


def test_path_inside_the_repository(setup: Setup) -> None:
    repo = push_base(str(setup.src / "dir"), "origin", "", False, "r1")
    assert repo.base_commit == setup.head()
    assert repo.url == str(setup.bare.resolve())


@pytest.mark.parametrize("form", ["absolute-path", "file-url"])
def test_remote_given_as_url(setup: Setup, form: str) -> None:
    url = str(setup.bare) if form == "absolute-path" else setup.bare.resolve().as_uri()
    repo = push_base(str(setup.src), url, "", False, "r1")
    assert repo.url == url
    assert setup.remote_ref("refs/flota/base/r1") == setup.head()


def test_relative_remote_url_is_resolved_against_the_repository(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "elsewhere" / "deeper"
    other.mkdir(parents=True)
    monkeypatch.chdir(other)  # the coordinator's cwd has nothing to do with the user's repo
    repo = push_base(str(setup.src), "../remote.git", "", False, "r1")
    assert repo.url == str(setup.bare.resolve())


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("ssh://git@example.com/team/repo.git", "ssh://git@example.com/team/repo.git"),
        ("https://example.com/team/repo.git", "https://example.com/team/repo.git"),
        ("file:///srv/repo.git", "file:///srv/repo.git"),
        ("git@example.com:team/repo.git", "git@example.com:team/repo.git"),  # scp-like
        ("/srv/repo.git", "/srv/repo.git"),
        ("../remote.git", "<bare>"),
        ("origin", "<bare>"),
    ],
)
def test_resolve_url(setup: Setup, remote: str, expected: str) -> None:
    with git.Repo(setup.src) as repo:
        got = resolve_url(repo, remote)
    assert got == (str(setup.bare.resolve()) if expected == "<bare>" else expected)


# --- errors ---------------------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo[RepoError]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def test_unknown_remote_is_named(setup: Setup) -> None:
    with pytest.raises(RepoError) as info:
        push_base(str(setup.src), "upstream", "", False, "r1")
    assert "'upstream'" in _one_line(info)


def test_unknown_ref(setup: Setup) -> None:
    with pytest.raises(RepoError, match="unknown revision 'no-such-branch'") as info:
        push_base(str(setup.src), "origin", "no-such-branch", False, "r1")
    _one_line(info)


def test_empty_repository_has_no_head(tmp_path: Path) -> None:
    sh("init", "-q", "-b", "main", str(tmp_path / "empty"), cwd=tmp_path)
    with pytest.raises(RepoError, match="has no commits yet"):
        push_base(str(tmp_path / "empty"), str(tmp_path / "remote.git"), "", False, "r1")


@pytest.mark.parametrize("make", ["plain-dir", "missing"])
def test_not_a_repository(tmp_path: Path, make: str) -> None:
    path = tmp_path / "not-a-repo"
    if make == "plain-dir":
        path.mkdir()
    with pytest.raises(RepoError, match="not a git repository") as info:
        push_base(str(path), "origin", "", False, "r1")
    assert str(path) in _one_line(info)


def test_push_to_a_missing_remote(setup: Setup, tmp_path: Path) -> None:
    missing = tmp_path / "gone.git"
    with pytest.raises(RepoError, match="cannot push the base to") as info:
        push_base(str(setup.src), str(missing), "", False, "r1")
    assert str(missing) in _one_line(info)


def test_push_through_a_configured_remote_that_is_gone(setup: Setup) -> None:
    sh("remote", "set-url", "origin", "../vanished.git", cwd=setup.src)
    with pytest.raises(RepoError, match="cannot push the base to") as info:
        push_base(str(setup.src), "origin", "", False, "r1")
    _one_line(info)


# --- the working tree -----------------------------------------------------------------------


def _user_state(s: Setup) -> tuple[str, str, str, str, str]:
    return (
        sh("status", "--porcelain=v1", "--untracked-files=all", "--ignored", cwd=s.src),
        sh("diff", "--cached", cwd=s.src),
        sh("diff", cwd=s.src),
        sh("rev-parse", "HEAD", cwd=s.src),
        sh("for-each-ref", cwd=s.src),
    )


def _tree(s: Setup, commit: str) -> dict[str, str]:
    files = sh("ls-tree", "-r", "--name-only", commit, cwd=s.bare).split()
    return {f: sh("show", f"{commit}:{f}", cwd=s.bare) for f in files}


def test_from_working_tree_records_changes_on_top_of_head(setup: Setup) -> None:
    head = setup.head()
    setup.write("a.txt", "one, edited\n")  # modified, not staged
    setup.write("b.txt", "two, staged\n")  # modified and staged
    sh("add", "b.txt", cwd=setup.src)
    (setup.src / "dir" / "c.txt").unlink()  # deleted
    setup.write("new.txt", "untracked\n")
    setup.write("newdir/deep.txt", "untracked too\n")
    setup.write("debug.log", "ignored\n")
    setup.write("build/out.bin", "ignored dir\n")
    before = _user_state(setup)

    repo = push_base(str(setup.src), "origin", "", True, "r1")

    assert _user_state(setup) == before  # index, working tree, HEAD and refs untouched
    base = repo.base_commit
    assert base != head
    assert setup.remote_ref("refs/flota/base/r1") == base
    assert sh("rev-list", "--parents", "-n", "1", base, cwd=setup.bare).split() == [base, head]
    assert _tree(setup, base) == {
        ".gitignore": "*.log\nbuild/\n",
        "a.txt": "one, edited\n",
        "b.txt": "two, staged\n",
        "new.txt": "untracked\n",
        "newdir/deep.txt": "untracked too\n",
    }


def test_from_working_tree_with_a_ref(setup: Setup) -> None:
    old = setup.head()
    setup.write("a.txt", "newer\n")
    sh("commit", "-q", "-am", "newer", cwd=setup.src)
    setup.write("extra.txt", "x\n")
    repo = push_base(str(setup.src), "origin", old, True, "r1")
    parents = sh("rev-list", "--parents", "-n", "1", repo.base_commit, cwd=setup.bare).split()
    assert parents == [repo.base_commit, old]
    # The working tree is laid over the chosen base: it carries a.txt as it is on disk.
    assert _tree(setup, repo.base_commit)["a.txt"] == "newer\n"
    assert _tree(setup, repo.base_commit)["extra.txt"] == "x\n"


@pytest.mark.parametrize("dirt", ["clean", "only-ignored"])
def test_from_working_tree_without_changes_is_head(setup: Setup, dirt: str) -> None:
    if dirt == "only-ignored":
        setup.write("x.log", "ignored\n")
        setup.write("build/y", "ignored\n")
    before = _user_state(setup)
    repo = push_base(str(setup.src), "origin", "", True, "r1")
    assert repo.base_commit == setup.head()
    assert setup.remote_ref("refs/flota/base/r1") == setup.head()
    assert _user_state(setup) == before


# --- a run's refs on the remote (flota prune) -------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "run_id"),
    [
        ("refs/heads/flota/r1a2b3c/1", "r1a2b3c"),
        ("refs/heads/flota/r1a2b3c/2-a3", "r1a2b3c"),
        ("refs/flota/base/r1a2b3c", "r1a2b3c"),
        ("refs/heads/flota/r1a2b3c", ""),  # a branch flota/<x> is not a job's
        ("refs/heads/main", ""),
        ("refs/flota/base", ""),
        ("refs/tags/flota/r1a2b3c/1", ""),
    ],
)
def test_run_of_ref(ref: str, run_id: str) -> None:
    assert run_of_ref(ref) == run_id


def test_list_and_delete_a_runs_refs(setup: Setup) -> None:
    head = setup.head()
    refs = [
        "refs/heads/flota/r1/1",
        "refs/heads/flota/r1/2-a2",
        "refs/flota/base/r1",
        "refs/heads/flota/r12/1",
    ]
    for ref in [*refs, "refs/heads/main", "refs/tags/flota/r1/1"]:
        sh("push", "-q", str(setup.bare), f"{head}:{ref}", cwd=setup.src)
    url = str(setup.bare)
    found = list_run_refs(url)
    assert {k: sorted(v) for k, v in found.items()} == {
        "r1": ["refs/flota/base/r1", "refs/heads/flota/r1/1", "refs/heads/flota/r1/2-a2"],
        "r12": ["refs/heads/flota/r12/1"],
    }
    delete_refs(url, found["r1"])
    assert list_run_refs(url) == {"r12": ["refs/heads/flota/r12/1"]}
    assert setup.remote_ref("refs/heads/main") == head and setup.remote_ref("refs/tags/flota/r1/1") == head
    assert sh("cat-file", "-t", head, cwd=setup.bare).strip() == "commit"


def test_an_unreadable_remote_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "gone.git"
    with pytest.raises(RepoError, match="cannot list") as info:
        list_run_refs(str(missing))
    assert str(missing) in _one_line(info)
    with pytest.raises(RepoError, match="cannot delete refs on") as info:
        delete_refs(str(missing), ["refs/heads/flota/r1/1"])
    _one_line(info)
