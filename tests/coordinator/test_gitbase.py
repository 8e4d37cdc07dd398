"""coordinator/gitbase.py against real git: a developer's repo and a bare remote in tmp_path."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import git
import pytest

from coordinator.errors import RepoError
from coordinator.gitbase import push_base, resolve_url
from tests.fleet import Fleet

pytestmark = pytest.mark.timeout(120)

IDENTITY = {
    "GIT_AUTHOR_NAME": "dev",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "dev",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
}


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
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


# --- the user's ssh setup (issue 14, defect 1) ------------------------------------------------
# A stand-in for ssh records how it was called, then runs git's remote command right here, so
# an ssh:// URL to a made-up host reaches the bare remote. The lab (tests/lab/test_ssh_remote.py)
# does the same against a real sshd.

FAKE_SSH = """#!/bin/sh
printf '%s\\n' "$@" > "$0.log"
for last; do :; done
case "$1" in -G) exit 1;; esac  # not OpenSSH, to git's probe of a GIT_SSH program
exec sh -c "$last"
"""


def _fake_ssh(tmp_path: Path, name: str = "ssh", body: str = FAKE_SSH) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def _args(fake: Path) -> list[str]:
    return Path(f"{fake}.log").read_text().splitlines()


def test_git_ssh_command_of_the_coordinator_is_used(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_ssh(tmp_path)
    monkeypatch.setenv("GIT_SSH_COMMAND", f"{fake} -i {tmp_path}/key -o UserKnownHostsFile={tmp_path}/kh")
    repo = push_base(str(setup.src), f"ssh://example.invalid{setup.bare}", "", False, "r1")
    assert setup.remote_ref("refs/flota/base/r1") == repo.base_commit == setup.head()
    args = _args(fake)
    assert args[:4] == ["-i", f"{tmp_path}/key", "-o", f"UserKnownHostsFile={tmp_path}/kh"]
    assert "BatchMode=yes" in args  # still never prompts: appended, not instead
    assert "example.invalid" in args


def test_core_ssh_command_of_the_repository_is_used(setup: Setup, tmp_path: Path) -> None:
    fake = _fake_ssh(tmp_path)
    sh("config", "core.sshCommand", f"{fake} -i {tmp_path}/repo-key", cwd=setup.src)
    push_base(str(setup.src), f"ssh://example.invalid{setup.bare}", "", False, "r1")
    assert setup.remote_ref("refs/flota/base/r1") == setup.head()
    assert _args(fake)[:2] == ["-i", f"{tmp_path}/repo-key"]
    assert "BatchMode=yes" in _args(fake)


def test_git_ssh_command_wins_over_core_ssh_command_as_in_git(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_ssh, repo_ssh = _fake_ssh(tmp_path, "ssh"), _fake_ssh(tmp_path / "other")
    monkeypatch.setenv("GIT_SSH_COMMAND", str(env_ssh))
    sh("config", "core.sshCommand", str(repo_ssh), cwd=setup.src)
    push_base(str(setup.src), f"ssh://example.invalid{setup.bare}", "", False, "r1")
    assert Path(f"{env_ssh}.log").exists() and not Path(f"{repo_ssh}.log").exists()


def test_git_ssh_program_is_used_with_nothing_added(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_ssh(tmp_path, "my-ssh-wrapper")  # git passes such a program only host and command
    monkeypatch.setenv("GIT_SSH", str(fake))
    push_base(str(setup.src), f"ssh://example.invalid{setup.bare}", "", False, "r1")
    assert setup.remote_ref("refs/flota/base/r1") == setup.head()
    assert _args(fake)[0] == "example.invalid"
    assert "BatchMode=yes" not in _args(fake)


@pytest.mark.parametrize(
    "tail",
    [' "$@"', ' "$@" # a comment would swallow anything appended'],  # an option after "$@" is no option
)
def test_a_shell_command_gets_nothing_appended(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail: str
) -> None:
    fake = _fake_ssh(tmp_path)
    monkeypatch.setenv("GIT_SSH_COMMAND", f"{fake} -4{tail}")
    push_base(str(setup.src), f"ssh://example.invalid{setup.bare}", "", False, "r1")
    assert _args(fake)[0] == "-4"
    assert "BatchMode=yes" not in _args(fake)


NEEDS_A_TERMINAL = """#!/bin/sh
if (exec 3<>/dev/tty) 2>/dev/null; then
  exec 3<>/dev/tty; printf 'Enter passphrase: ' >&3; read answer <&3
fi
echo "ssh-stand-in: no terminal to ask on" >&2
exit 255
"""


def test_never_prompts_even_from_a_terminal(setup: Setup, tmp_path: Path) -> None:
    """A coordinator started in a terminal: the push has none, so ssh cannot ask on it."""
    import pty
    import select
    import sys
    import time

    fake = _fake_ssh(tmp_path, "ssh", NEEDS_A_TERMINAL)
    code = (
        "import sys; from coordinator.gitbase import push_base\n"
        "try:\n"
        f"    push_base({str(setup.src)!r}, {f'ssh://example.invalid{setup.bare}'!r}, '', False, 'r1', 20)\n"
        "except Exception as exc:\n"
        "    print('RESULT', exc)\n"
    )
    env = {**os.environ, "GIT_SSH_COMMAND": str(fake), "PYTHONPATH": str(Path(__file__).parents[2])}
    start = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:  # the child has the pty as its controlling terminal
        os.execve(sys.executable, [sys.executable, "-c", code], env)
    out = b""
    while time.monotonic() - start < 60:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    os.close(fd)
    text = out.decode(errors="replace")
    assert "Enter passphrase" not in text
    assert "RESULT cannot push the base to" in text and "no terminal to ask on" in text, text
    assert time.monotonic() - start < 15


# --- git's reasons (issue 14, defect 2) -------------------------------------------------------


def test_ssh_reason_comes_with_the_fatal_line(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_ssh(tmp_path, "ssh", "#!/bin/sh\necho 'Host key verification failed.' >&2\nexit 255\n")
    monkeypatch.setenv("GIT_SSH_COMMAND", str(fake))
    url = f"ssh://example.invalid{setup.bare}"
    with pytest.raises(RepoError) as info:
        push_base(str(setup.src), url, "", False, "r1")
    assert _one_line(info) == (
        f"cannot push the base to {url}: Host key verification failed "
        "(fatal: Could not read from remote repository.)"
    )


def _reject_with(setup: Setup, *lines: str) -> None:
    hook = setup.bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\n" + "".join(f"echo {shlex.quote(ln)} >&2\n" for ln in lines) + "exit 1\n")
    hook.chmod(0o755)


def test_a_rejected_push_says_why(setup: Setup) -> None:
    _reject_with(setup, "Repository not found.")
    with pytest.raises(RepoError) as info:
        push_base(str(setup.src), "origin", "", False, "r1")
    message = _one_line(info)
    assert "remote: Repository not found" in message
    assert "pre-receive hook declined" in message
    assert message.endswith(f"(error: failed to push some refs to '{setup.bare.resolve()}')")


def test_reasons_are_bounded(setup: Setup) -> None:
    _reject_with(setup, *[f"line {i} " + "x" * 2000 for i in range(50)])
    with pytest.raises(RepoError) as info:
        push_base(str(setup.src), "origin", "", False, "r1")
    message = _one_line(info)
    assert len(message) < 500
    assert "line 0 " not in message  # the lines nearest git's verdict are the ones kept


# --- the push timeout (issue 14, defect 14) ---------------------------------------------------


def test_a_remote_that_never_answers_times_out_as_configured(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import time

    from coordinator.config import load_config

    (tmp_path / "home" / "coordinator").mkdir(parents=True)
    (tmp_path / "home" / "coordinator" / "coordinator.toml").write_text("push_timeout_s = 2\n")
    timeout = load_config(tmp_path / "home").push_timeout_s
    assert timeout == 2.0
    monkeypatch.setenv("GIT_SSH_COMMAND", "ssh -F /dev/null -o UserKnownHostsFile=/dev/null")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the kernel's backlog), never speaks
        port = silent.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(RepoError) as info:
            push_base(str(setup.src), f"ssh://git@127.0.0.1:{port}/repo.git", "", False, "r1", timeout)
        took = time.monotonic() - start
    assert "no answer within 2 s" in _one_line(info)
    assert "push_timeout_s" in _one_line(info)
    assert 2 <= took < 8


def test_the_coordinator_honours_its_push_timeout_flag(
    setup: Setup, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real coordinator and `flota run --repo`: the refusal comes after the configured 2 s."""
    import socket
    import time

    monkeypatch.setenv("GIT_SSH_COMMAND", "ssh -F /dev/null -o UserKnownHostsFile=/dev/null")
    fleet.start_coordinator("--push-timeout", "2")
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"ssh://git@127.0.0.1:{silent.getsockname()[1]}/repo.git"
        start = time.monotonic()
        result = fleet.flota("run", "--repo", str(setup.src), "--remote", url, "echo hi", timeout=60)
        took = time.monotonic() - start
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot push the base to {url}: no answer within 2 s" in result.stderr
    assert took < 15


@pytest.mark.parametrize(("text", "ok"), [("0.5", False), ("1", True), ("110", True), ("111", False)])
def test_push_timeout_bounds(tmp_path: Path, text: str, ok: bool) -> None:
    from coordinator.config import load_config
    from coordinator.errors import ConfigError

    (tmp_path / "coordinator").mkdir()
    (tmp_path / "coordinator" / "coordinator.toml").write_text(f"push_timeout_s = {text}\n")
    if ok:
        assert load_config(tmp_path).push_timeout_s == float(text)
    else:
        with pytest.raises(ConfigError, match="push timeout"):
            load_config(tmp_path)
    assert load_config(tmp_path, push_timeout_s=30).push_timeout_s == 30  # the flag wins
