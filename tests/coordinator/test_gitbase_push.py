"""coordinator/gitbase.py's push of the base: the user's ssh setup, git's reasons, the timeout
(issue 14, defects 1, 2 and 14), against real git, a stand-in ssh and a real coordinator."""

from __future__ import annotations

import os
import shlex
import socket
import time
from pathlib import Path

import pytest

from coordinator.config import load_config
from coordinator.errors import ConfigError, RepoError
from coordinator.gitbase import push_base
from tests.coordinator.test_gitbase import Setup, _one_line, isolate_git, make_setup, sh
from tests.fleet import Fleet

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_git(monkeypatch)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return make_setup(tmp_path)


# --- the user's ssh setup (issue 14, defect 1) ------------------------------------------------
# A stand-in for ssh records how it was called, then runs git's remote command right here, so
# an ssh:// URL to a made-up host reaches the bare remote; tests/lab/test_ssh_remote.py does
# the same against a real sshd.

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
    """A real coordinator and `flota run --repo`: the refusal comes after the configured 2 s,
    and the CLI says what it waits for meanwhile (issue 14, defect 14: not silent)."""
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
    lines = result.stderr.splitlines()
    assert lines[0] == f"flota: the coordinator is pushing the run's base to {url}...", lines
    assert lines[-1].startswith("flota: cannot push the base"), lines


@pytest.mark.parametrize(("text", "ok"), [("0.5", False), ("1", True), ("110", True), ("111", False)])
def test_push_timeout_bounds(tmp_path: Path, text: str, ok: bool) -> None:
    (tmp_path / "coordinator").mkdir()
    (tmp_path / "coordinator" / "coordinator.toml").write_text(f"push_timeout_s = {text}\n")
    if ok:
        assert load_config(tmp_path).push_timeout_s == float(text)
    else:
        with pytest.raises(ConfigError, match="push timeout"):
            load_config(tmp_path)
    assert load_config(tmp_path, push_timeout_s=30).push_timeout_s == 30  # the flag wins
