"""The llm agent: its tools on real files, and the real program against a fake OpenAI server.

The program runs as ``python -m node_agent.agents.llm`` (a subprocess, as the runner starts
it) with ``openai/<name>`` models and FLOTA_LLM_API_BASE pointing at tests/fake_openai.py
on 127.0.0.1; nothing goes anywhere else.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from node_agent.agents.tools import (
    MAX_COMMAND_OUTPUT,
    MAX_READ_BYTES,
    TOOL_NAMES,
    TOOL_SCHEMAS,
    PathEscape,
    Toolbox,
    ToolError,
    command_env,
    edit_file,
    list_files,
    read_file,
    resolve_inside,
    run_command,
    write_file,
)
from tests.fake_openai import FakeOpenAI, Reply, call, calls, raw, text

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
needs_litellm = pytest.mark.skipif(
    importlib.util.find_spec("litellm") is None, reason="litellm is not installed"
)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


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


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): p.read_text() if p.is_file() and not p.is_symlink() else "<dir/link>"
        for p in sorted(directory.rglob("*"))
    }


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


def test_run_command_status_output_and_env(box: tuple[Path, Path]) -> None:
    wt, _ = box
    out = run_command(wt, "cat a.txt; echo oops >&2; exit 4", env=command_env(os.environ))
    assert out.startswith("[exit code 4,") and "alpha" in out and "oops" in out
    env = command_env(
        {"PATH": os.environ["PATH"], "OPENAI_API_KEY": "sk-x", "FLOTA_LLM_PROMPT": "p", "KEEP": "1"}
    )
    assert env == {"PATH": os.environ["PATH"], "KEEP": "1"}  # the model's credentials stay ours
    out = run_command(wt, 'echo "[${OPENAI_API_KEY:-none}] [$KEEP]"', env=env)
    assert "[none] [1]" in out
    long = run_command(wt, "yes 0123456789 | head -c 200000")
    assert len(long) < MAX_COMMAND_OUTPUT + 200 and "bytes of output cut" in long
    with pytest.raises(ToolError, match="empty command"):
        run_command(wt, "  ")


def test_run_command_timeout_kills_the_whole_group(box: tuple[Path, Path]) -> None:
    wt, _ = box
    started = time.monotonic()
    out = run_command(wt, "sleep 30 & echo $! > child.pid; echo started; wait", timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert out.startswith("[killed after the timeout of 0.5 s") and "started" in out
    child = int((wt / "child.pid").read_text())
    assert wait_until(lambda: not _running(child), 5)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_toolbox_turns_every_failure_into_a_message(box: tuple[Path, Path]) -> None:
    wt, outside = box
    tools = Toolbox(wt, env={"PATH": os.environ["PATH"]})
    (wt / "out_dir").symlink_to(outside)
    (wt / "alias").symlink_to("a.txt")
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("read_file", {"path": "../outside/secret.txt"}, "error: path escapes the worktree"),
        ("read_file", {"path": "/etc/passwd"}, "error: path escapes the worktree"),
        ("write_file", {"path": "out_dir/new.txt", "content": "x"}, "error: path escapes the worktree"),
        ("write_file", {"path": "alias", "content": "x"}, "error: refusing to write through a symlink"),
        (
            "edit_file",
            {"path": "alias", "old": "alpha", "new": "x"},
            "error: refusing to write through a symlink",
        ),
        ("read_file", {}, "error: missing argument 'path'"),
        ("read_file", {"path": 3}, "error: argument 'path' must be a str"),
        ("read_file", {"path": "a.txt", "offset": "x"}, "error: argument 'offset' must be an integer"),
        ("read_file", {"path": "a.txt", "bogus": 1}, "error: unknown argument(s) for read_file: bogus"),
        ("run_command", {"command": "true", "timeout_s": -1}, "error: timeout_s must be > 0"),
        ("nope", {}, "error: unknown tool 'nope'"),
    ]
    for name, args, expected in cases:
        result = tools.call(name, args)
        assert not result.ok and result.output.startswith(expected), (name, args, result)
    assert snapshot(outside) == {"secret.txt": "TOP-SECRET\n"}
    assert (wt / "a.txt").read_text() == "alpha\nbeta\ngamma\n"
    done = tools.call("finish", {"summary": "all done"})
    assert done.ok and done.finished and done.output == "all done"
    capped = tools.call("run_command", {"command": "sleep 20", "timeout_s": 60}, time_left_s=0.3)
    assert "killed after the timeout of 0.3 s" in capped.output
    tools.call("run_command", {"command": "(sleep 30 &) ; echo bg"})  # a background leftover
    tools.close()
    assert tools.groups == set()


def test_tool_schemas_are_openai_functions() -> None:
    assert {s["function"]["name"] for s in TOOL_SCHEMAS} == TOOL_NAMES
    assert {"list_files", "read_file", "write_file", "edit_file", "run_command", "finish"} == TOOL_NAMES
    for schema in TOOL_SCHEMAS:
        assert schema["type"] == "function"
        params = schema["function"]["parameters"]
        assert params["type"] == "object" and set(params["required"]) <= set(params["properties"])
    json.dumps(TOOL_SCHEMAS)


def test_importing_the_tools_stays_cheap() -> None:
    code = "import sys, node_agent.agents.tools, node_agent.agents.llm; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


# --- the program -------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    report: dict[str, Any]
    requests: list[dict[str, Any]]


def agent_env(wt: Path, base_url: str, report: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTA_") and not k.endswith("_API_KEY")}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        OPENAI_API_KEY="dummy",
        FLOTA_WORKTREE=str(wt),
        FLOTA_LLM_MODEL="openai/fake-local-model",
        FLOTA_LLM_PROMPT="Change the code.",
        FLOTA_LLM_API_BASE=base_url,
        FLOTA_LLM_REPORT=str(report),
    )
    env.update(extra)
    return env


def run_agent(
    wt: Path, script: list[Reply], default: Reply | None = None, timeout_s: float = 40, **extra: str
) -> Outcome:
    report = wt.parent / "report.json"
    with FakeOpenAI(script, default=default) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "node_agent.agents.llm"],
            env=agent_env(wt, server.base_url, report, **extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        requests = server.requests
    return Outcome(proc.returncode, proc.stdout, proc.stderr, json.loads(report.read_text()), requests)


REPORT_FIELDS = {
    "status",
    "error",
    "steps",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "answer",
    "model",
    "duration_s",
}


@needs_litellm
def test_edits_land_and_the_report_is_right(box: tuple[Path, Path]) -> None:
    wt, _ = box
    script = [
        call("write_file", path="src/app.py", content="def f():\n    return 1\n", usage=(120, 30)),
        calls(("read_file", {"path": "src/app.py"}), content="Now I fix it.", usage=(150, 20)),
        call("edit_file", path="src/app.py", old="return 1", new="return 2", usage=(200, 25)),
        call("run_command", command="python3 -c 'import src.app as a; print(a.f())'", usage=(210, 15)),
        call("finish", summary="f now returns 2", usage=(230, 10)),
    ]
    out = run_agent(wt, script)
    assert out.code == 0, out.stdout + out.stderr
    assert (wt / "src" / "app.py").read_text() == "def f():\n    return 2\n"
    r = out.report
    assert set(r) == REPORT_FIELDS
    assert r["status"] == "success" and r["error"] is None and r["answer"] == "f now returns 2"
    assert (r["steps"], r["tokens_in"], r["tokens_out"]) == (5, 910, 100)
    assert r["cost_usd"] == 0 and r["model"] == "openai/fake-local-model" and r["duration_s"] > 0
    lines = out.stdout.splitlines()
    assert lines[:5] == [
        "step 1: write_file src/app.py",
        "step 2: read_file src/app.py  | Now I fix it.",
        "step 3: edit_file src/app.py",
        "step 4: run_command python3 -c 'import src.app as a; print(a.f())'",
        "step 5: finish f now returns 2",
    ]
    # What the model saw: the system prompt, the task, the tools, each tool's result.
    first, last = out.requests[0], out.requests[-1]
    assert first["model"] == "fake-local-model" and first["max_tokens"] == 4096
    assert [t["function"]["name"] for t in first["tools"]] == [s["function"]["name"] for s in TOOL_SCHEMAS]
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert first["messages"][1]["content"] == "Change the code."
    tool_results = [m["content"] for m in last["messages"] if m["role"] == "tool"]
    assert tool_results[0] == "wrote 22 bytes to src/app.py"
    assert tool_results[2] == "edited src/app.py"
    assert tool_results[3].startswith("[exit code 0,") and tool_results[3].endswith("\n2\n")


@needs_litellm
def test_max_steps_stops_partial(box: tuple[Path, Path]) -> None:
    wt, _ = box
    out = run_agent(wt, [], default=call("list_files"), FLOTA_LLM_MAX_STEPS="3")
    assert out.code == 3
    assert out.report["status"] == "partial" and out.report["error"] == "max steps reached (3)"
    assert out.report["steps"] == 3 and len(out.requests) == 3


@needs_litellm
def test_budget_stops_before_the_call_that_would_pass_it(box: tuple[Path, Path]) -> None:
    # gpt-4o is in litellm's price map ($2.5 / $10 per million tokens): each reply below
    # costs 2000 x 2.5e-6 + 1000 x 1e-5 = $0.015; each call is estimated at about
    # 1000 prompt tokens x 2.5e-6 + 1000 max tokens x 1e-5 = ~$0.0125. With $0.04, calls 1
    # and 2 go out ($0.03 spent); call 3 would pass $0.04, so it is never made.
    wt, _ = box
    out = run_agent(
        wt,
        [],
        default=call("list_files", usage=(2000, 1000)),
        FLOTA_LLM_MODEL="openai/gpt-4o",
        FLOTA_LLM_BUDGET_USD="0.04",
        FLOTA_LLM_MAX_OUTPUT_TOKENS="1000",
    )
    assert out.code == 3, out.stdout + out.stderr
    assert len(out.requests) == 2
    r = out.report
    assert r["status"] == "partial" and r["error"].startswith("budget:")
    assert r["steps"] == 2 and r["cost_usd"] == pytest.approx(0.03)
    assert out.requests[0]["max_tokens"] == 1000


@needs_litellm
def test_a_local_model_costs_nothing(box: tuple[Path, Path]) -> None:
    wt, _ = box
    script = [call("list_files", usage=(5000, 5000)), call("finish", summary="ok", usage=(5000, 5000))]
    out = run_agent(wt, script, FLOTA_LLM_MODEL="openai/my-local-model", FLOTA_LLM_BUDGET_USD="0.000001")
    assert out.code == 0, out.stdout + out.stderr
    assert out.report["cost_usd"] == 0 and out.report["tokens_in"] == 10000 and len(out.requests) == 2


@needs_litellm
def test_timeout_cuts_a_slow_model_call(box: tuple[Path, Path]) -> None:
    # The clock starts with the process (litellm's import included), so give it room.
    wt, _ = box
    started = time.monotonic()
    out = run_agent(wt, [call("list_files")], default=call("list_files", delay_s=30), FLOTA_LLM_TIMEOUT_S="7")
    elapsed = time.monotonic() - started
    assert out.code == 3, out.stdout + out.stderr
    assert out.report["status"] == "partial" and out.report["error"] == "timeout after 7 s"
    assert elapsed < 12 and 6.5 < out.report["duration_s"] < 10


@needs_litellm
def test_escapes_are_refused_and_nothing_outside_changes(box: tuple[Path, Path]) -> None:
    wt, outside = box
    (wt / "out_dir").symlink_to(outside)
    (wt / "out_file").symlink_to(outside / "secret.txt")
    (wt / "alias").symlink_to("a.txt")
    before_outside, before_a = snapshot(outside), (wt / "a.txt").read_text()
    script = [
        call("write_file", path="../x", content="pwned"),
        call("read_file", path="/etc/passwd"),
        calls(
            ("write_file", {"path": "out_dir/new.txt", "content": "pwned"}),
            ("edit_file", {"path": "out_file", "old": "secret", "new": "pwned"}),
            ("read_file", {"path": "out_file"}),
            ("write_file", {"path": "alias", "content": "pwned"}),
            ("list_files", {"path": "../outside"}),
        ),
        call("finish", summary="tried"),
    ]
    out = run_agent(wt, script)
    assert out.code == 0, out.stdout + out.stderr
    assert snapshot(outside) == before_outside and not (wt.parent / "x").exists()
    assert (wt / "a.txt").read_text() == before_a
    results = [m["content"] for m in out.requests[-1]["messages"] if m["role"] == "tool"]
    assert len(results) == 7
    assert all(
        r.startswith(("error: path escapes the worktree", "error: refusing to write")) for r in results
    )
    assert "TOP-SECRET" not in "".join(results)
    assert "step 2: read_file /etc/passwd (error: path escapes the worktree: /etc/passwd" in out.stdout


NO_CHOICES = raw({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []})


@needs_litellm
def test_malformed_replies_are_told_back_and_counted(box: tuple[Path, Path]) -> None:
    wt, _ = box
    script = [
        calls(("write_file", '{"path": "a.txt", "content": '), ("nope", {"x": 1})),
        NO_CHOICES,
        call("write_file", path="ok.txt", content="ok"),  # a good call resets the count
        text("I think I am done."),
        calls(("list_files", "[1, 2]")),
        call("finish", summary="done"),
    ]
    out = run_agent(wt, script)
    assert out.code == 0, out.stdout + out.stderr
    assert out.report["status"] == "success" and out.report["steps"] == 6
    assert (wt / "ok.txt").read_text() == "ok" and (wt / "a.txt").read_text() == "alpha\nbeta\ngamma\n"
    assert out.stdout.splitlines()[:5] == [
        "step 1: bad reply (1/3): write_file with invalid JSON arguments; unknown tool 'nope'",
        "step 2: bad reply (2/3): the reply had no choices",
        "step 3: write_file ok.txt",
        "step 4: bad reply (1/3): text without a tool call: I think I am done.",
        "step 5: bad reply (2/3): list_files with arguments that are not an object",
    ]
    messages = out.requests[-1]["messages"]
    said = [m["content"] for m in messages if m["role"] in ("tool", "user")][1:]
    assert said[0].startswith("error: the arguments are not valid JSON")
    assert said[1].startswith("error: unknown tool 'nope'; the tools are: edit_file, finish")
    assert "no choices" in said[2]
    assert "call finish(summary)" in said[4]
    # The history sent back holds only valid JSON arguments.
    for m in messages:
        for tc in m.get("tool_calls") or []:
            json.loads(tc["function"]["arguments"])


@needs_litellm
def test_three_bad_replies_in_a_row_fail(box: tuple[Path, Path]) -> None:
    wt, _ = box
    script = [call("list_files"), calls(("read_file", "{oops")), NO_CHOICES, call("rm_rf")]
    out = run_agent(wt, script)
    assert out.code == 1
    r = out.report
    assert r["status"] == "failed" and r["steps"] == 4 and len(out.requests) == 4
    assert r["error"] == "3 bad model replies in a row; last: unknown tool 'rm_rf'"


@needs_litellm
def test_sigterm_ends_partial_and_kills_the_running_command(box: tuple[Path, Path]) -> None:
    wt, _ = box
    report = wt.parent / "report.json"
    with FakeOpenAI([call("run_command", command="echo $$ > cmd.pid; sleep 60")]) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node_agent.agents.llm"],
            env=agent_env(wt, server.base_url, report),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_until(
                lambda: (wt / "cmd.pid").exists() and (wt / "cmd.pid").read_text().strip() != "", 20
            )
            command = int((wt / "cmd.pid").read_text())
            proc.send_signal(signal.SIGTERM)
            stdout, _ = proc.communicate(timeout=10)
        finally:
            proc.kill()
    assert proc.returncode == 3
    assert json.loads(report.read_text())["error"] == "interrupted by SIGTERM"
    assert "interrupted by SIGTERM" in stdout
    assert wait_until(lambda: not _running(command), 5)


@pytest.mark.parametrize(
    ("drop", "extra", "message"),
    [
        (
            ("FLOTA_WORKTREE", "FLOTA_LLM_PROMPT"),
            {},
            "flota llm agent: missing environment variables: FLOTA_WORKTREE, FLOTA_LLM_PROMPT",
        ),
        (
            (),
            {"FLOTA_LLM_MAX_STEPS": "many"},
            "flota llm agent: FLOTA_LLM_MAX_STEPS must be an integer, not 'many'",
        ),
        (
            (),
            {"FLOTA_LLM_BUDGET_USD": "-1"},
            "flota llm agent: FLOTA_LLM_BUDGET_USD must be a number >= 0, not '-1'",
        ),
        (
            (),
            {"FLOTA_WORKTREE": "/nonexistent/wt"},
            "flota llm agent: FLOTA_WORKTREE is not a directory: /nonexistent/wt",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    box: tuple[Path, Path], drop: tuple[str, ...], extra: dict[str, str], message: str
) -> None:
    wt, _ = box
    report = wt.parent / "report.json"
    env = agent_env(wt, "http://127.0.0.1:9/v1", report, **extra)
    for name in drop:
        del env[name]
    proc = subprocess.run(
        [sys.executable, "-m", "node_agent.agents.llm"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert proc.stderr == message + "\n" and proc.stdout == ""
    assert json.loads(report.read_text())["status"] == "failed"


@needs_litellm
def test_a_missing_api_key_is_bad_input(box: tuple[Path, Path]) -> None:
    wt, _ = box
    report = wt.parent / "report.json"
    env = agent_env(wt, "", report, FLOTA_LLM_MODEL="anthropic/claude-sonnet-4-5")
    del env["FLOTA_LLM_API_BASE"]
    proc = subprocess.run(
        [sys.executable, "-m", "node_agent.agents.llm"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr
        == "flota llm agent: anthropic/claude-sonnet-4-5 needs ANTHROPIC_API_KEY in the environment\n"
    )
    assert json.loads(report.read_text())["status"] == "failed"


@needs_litellm
def test_text_twice_in_a_row_is_the_final_answer(box: tuple[Path, Path]) -> None:
    """Weak local models never call tools: told once, a second text reply is the answer."""
    wt, _ = box
    out = run_agent(wt, [text("Git tracks changes."), text("Git is version control.")])
    assert out.code == 0, out.stdout + out.stderr
    assert (out.report["status"], out.report["answer"], out.report["steps"]) == (
        "success",
        "Git is version control.",
        2,
    )
    assert (
        out.stdout.splitlines()[-2:]
        == [
            "step 2: answered in text: Git is version control.",
            "success: Git is version control.",
        ]
        or "answered in text" in out.stdout
    )
