"""Direct exec: a command of plain words runs without bash, one with shell syntax through
bash, with the same exit statuses, environment, process and cancel for both (real jobs
through a real runner and keeper)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from node_agent import commandline
from node_agent.commandline import direct_argv
from node_agent.convert import job_from_proto
from protos.flota.v1 import types_pb2
from tests.node_agent.test_runner import Node, all_gone, new_spec, pids_in, run

__all__ = ["new_spec"]  # the fixture, shared with test_runner


def script(path: Path, body: str, shebang: str = "#!/bin/sh\n") -> Path:
    path.write_text(shebang + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def shell_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every start through bash, logged: the node's shell is a real bash behind a wrapper."""
    log = tmp_path / "shell.log"
    wrapper = script(tmp_path / "bash", f'printf "%s\\n" "$2" >> {log}\nexec /bin/bash "$@"\n')
    monkeypatch.setattr(commandline, "SHELL", str(wrapper))
    return log


def started_by_bash(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize(
    "line",
    [
        "python3 -c pass",
        "  ls   -l\t/tmp ",
        "env --ignore-environment A=1",
        "./tool a.b,c:d+e@f%g",
    ],
)
def test_plain_words_run_directly(tmp_path: Path, line: str) -> None:
    script(tmp_path / "tool", "exit 0\n")
    found = direct_argv(line, tmp_path, {"PATH": os.environ["PATH"]})
    assert found is not None and found[0] == line.split()


@pytest.mark.parametrize(
    "line",
    [
        "echo hi",  # a builtin
        "true",
        "cd /tmp",
        "exit 3",
        "[ -e x ]",
        "A=1 env",  # an assignment
        "ls $HOME",
        "ls ~",
        "ls *.py",
        "ls a?",
        "ls {a,b}",
        "ls 'a b'",
        'ls "a"',
        "ls a\\ b",
        "ls > out",
        "ls | wc",
        "ls; ls",
        "ls && ls",
        "ls &",
        "ls # comment",
        "ls\nls",
        "ls\rx",
        "ls $(pwd)",
        "ls `pwd`",
        "ls (x)",
        "ls é",
        "no-such-program-here x",  # bash says 127
        "./plain-file",  # no #! and no ELF: bash runs it itself
        "",
    ],
)
def test_shell_syntax_goes_to_bash(tmp_path: Path, line: str) -> None:
    (tmp_path / "plain-file").write_text("echo hi\n")
    (tmp_path / "plain-file").chmod(0o755)
    assert direct_argv(line, tmp_path, {"PATH": os.environ["PATH"]}) is None


def test_an_exported_bash_function_keeps_bash() -> None:
    env = {"PATH": os.environ["PATH"], "BASH_FUNC_ls%%": "() { echo mine; }"}
    assert direct_argv("ls", Path("/"), env) is None


@pytest.mark.parametrize("quote", ["", "'"], ids=["direct", "bash"])
@pytest.mark.parametrize(
    ("body", "status", "code", "error"),
    [
        ('exit "$1"', "failed", 7, "exit code 7"),
        ("exit 0", "success", 0, ""),
        ("kill -TERM $$", "failed", -15, "killed by signal SIGTERM"),
        ("kill -KILL $$", "failed", -9, "killed by signal SIGKILL"),
    ],
)
def test_the_same_exit_status_either_way(
    tmp_path: Path,
    new_spec: Callable[..., types_pb2.JobSpec],
    shell_log: Path,
    quote: str,
    body: str,
    status: str,
    code: int,
    error: str,
) -> None:
    prog = script(tmp_path / "prog", body + "\n")
    line = f"{quote}{prog}{quote} 7"
    result = run(Node(tmp_path / "node").run(new_spec(line)))
    assert (result.status, result.exit_code, result.error) == (status, code, error)
    assert started_by_bash(shell_log) == ([line] if quote else [])


def test_the_same_environment_and_process_either_way(
    tmp_path: Path,
    new_spec: Callable[..., types_pb2.JobSpec],
    shell_log: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SHLVL", raising=False)  # the daemon's: bash would say 0
    prog = script(tmp_path / "prog", 'echo "pid $$"\nenv | sort\n')
    node = Node(tmp_path / "node")
    seen = []
    for line in (f"{prog}", f"'{prog}'"):
        spec = new_spec(line, env={"MY_VAR": "x y"})
        assert run(node.run(spec)).status == "success"
        pid_line, *env = node.lines(spec.attempt_id)
        assert pids_in([pid_line]) == [node.entry(spec.attempt_id).pid]  # no wrapper process
        ids = {spec.job_id, spec.run_id, spec.attempt_id}
        cwd = str(node.workspace.scratch_path(spec.attempt_id))
        seen.append([v for v in env if not any(x in v for x in ids)])
        assert f"PWD={cwd}" in env
    assert seen[0] == seen[1] and "MY_VAR=x y" in seen[0]
    assert "SHLVL=0" in seen[0] and f"_={prog}" in seen[0]
    assert started_by_bash(shell_log) == [f"'{prog}'"]


@pytest.mark.parametrize("quote", ["", "'"], ids=["direct", "bash"])
def test_a_cancel_kills_the_group_either_way(
    tmp_path: Path, new_spec: Callable[..., types_pb2.JobSpec], shell_log: Path, quote: str
) -> None:
    prog = script(tmp_path / "prog", "sleep 100 &\necho child $!\necho ready\nwait\n")
    node = Node(tmp_path / "node", grace=10.0)
    spec = new_spec(f"{quote}{prog}{quote}")

    async def scenario() -> types_pb2.JobResult:
        assert node.runner.start(job_from_proto(spec)) == (True, "")
        await node.until(lambda: "ready" in node.lines(spec.attempt_id), "the job and its child")
        assert node.runner.cancel(spec.attempt_id)
        return await node.result(spec.attempt_id)

    result = run(scenario())
    assert (result.status, result.error) == ("cancelled", "cancelled")
    assert all_gone([node.entry(spec.attempt_id).pid, *pids_in(node.lines(spec.attempt_id))])
    assert started_by_bash(shell_log) == ([f"'{prog}'"] if quote else [])
