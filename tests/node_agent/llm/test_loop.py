"""The agent loop, through the real program against a fake OpenAI server: steps, budget,
time, the model's mistakes told back, and the final answer."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from node_agent.agents.llm import (
    BudgetRefused,
    Completion,
    Config,
    ModelError,
    ModelTimeout,
    Report,
    Toolbox,
    ToolCall,
    TransientModelError,
    Unreachable,
    run,
)
from node_agent.agents.llm.tools import TOOL_SCHEMAS
from tests.fake_openai import call, calls, text
from tests.node_agent.llm.program import NO_CHOICES, REPORT_FIELDS, needs_litellm, run_agent, snapshot

pytestmark = pytest.mark.timeout(60)


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
    assert out.report["reason"] == "max_steps"  # the node's word for the coordinator: final
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
    assert r["status"] == "partial" and r["error"].startswith("budget:") and r["reason"] == "budget"
    assert r["steps"] == 2 and r["cost_usd"] == pytest.approx(0.03)
    assert out.requests[0]["max_tokens"] == 1000


@needs_litellm
def test_timeout_cuts_a_slow_model_call(box: tuple[Path, Path]) -> None:
    # The clock starts with the process (litellm's import included), so give it room.
    wt, _ = box
    started = time.monotonic()
    out = run_agent(wt, [call("list_files")], default=call("list_files", delay_s=30), FLOTA_LLM_TIMEOUT_S="7")
    elapsed = time.monotonic() - started
    assert out.code == 3, out.stdout + out.stderr
    assert out.report["status"] == "partial" and out.report["error"] == "timeout after 7 s"
    assert out.report["reason"] == "time_limit"
    assert elapsed < 25 and 6.5 < out.report["duration_s"] < 10  # cut at 7 s, long before the 30 s reply


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


# --- the loop in-process, on a scripted model ------------------------------------------------


class ScriptedModel:
    """A :class:`Model` that answers (or raises) from a list, one item per call."""

    name = "scripted"
    priced = False
    max_output_tokens: int | None = None

    def __init__(self, script: list[Completion | Exception]) -> None:
        self.script = script
        self.calls = 0

    def estimate_usd(self, messages: Sequence[Mapping[str, Any]], max_tokens: int) -> float:
        return 0.0

    def complete(
        self, messages: Sequence[Mapping[str, Any]], max_tokens: int, timeout_s: float | None
    ) -> Completion:
        item = self.script[self.calls]
        self.calls += 1
        if isinstance(item, Exception):
            raise item
        return item


def _finish(summary: str) -> Completion:
    return Completion(True, None, (ToolCall("c1", "finish", json.dumps({"summary": summary})),), 10, 2, 0.0)


def _run(wt: Path, model: ScriptedModel) -> tuple[Report, list[float], str]:
    out, sleeps = io.StringIO(), []
    report = run(
        Config(wt, "scripted", "do it"), model, Toolbox(wt, {}), out, clock=lambda: 0.0, sleep=sleeps.append
    )
    return report, sleeps, out.getvalue()


def test_provider_errors_are_retried_after_a_backoff(box: tuple[Path, Path]) -> None:
    wt, _ = box
    model = ScriptedModel([TransientModelError("502"), ModelTimeout("slow"), _finish("done")])
    report, sleeps, out = _run(wt, model)
    assert (report.status, report.answer, report.steps, report.tokens_in) == ("success", "done", 3, 10)
    assert sleeps == [0.5] and model.calls == 3  # a timeout within the deadline is retried at once
    assert out.splitlines()[:2] == [
        "step 1: bad reply (1/3): provider error: 502",
        "step 2: bad reply (2/3): model call timed out: slow",
    ]


def test_three_provider_errors_in_a_row_fail(box: tuple[Path, Path]) -> None:
    wt, _ = box
    report, sleeps, _ = _run(wt, ScriptedModel([TransientModelError("boom")] * 3))
    assert (report.status, report.steps) == ("failed", 3)
    assert report.error == "3 bad model replies in a row; last: provider error: boom"
    assert sleeps == [0.5, 2.0]


NO_SERVER = "cannot reach the model server at http://127.0.0.1:9/v1: connection refused"


def test_a_server_that_cannot_be_reached_is_tried_a_few_times_and_is_no_step(box: tuple[Path, Path]) -> None:
    wt, _ = box
    report, sleeps, out = _run(wt, ScriptedModel([Unreachable(NO_SERVER)] * 3))
    assert (report.status, report.error, report.reason) == ("failed", NO_SERVER, "model_unreachable")
    assert (report.steps, sleeps) == (0, [0.5, 2.0])
    assert out.splitlines() == [
        f"step 0: {NO_SERVER}; trying again in 0.5 s",
        f"step 0: {NO_SERVER}; trying again in 2 s",
        f"step 0: {NO_SERVER} (3 tries)",
    ]


def test_a_server_that_comes_back_carries_on(box: tuple[Path, Path]) -> None:
    wt, _ = box
    model = ScriptedModel([Unreachable(NO_SERVER), Unreachable(NO_SERVER), _finish("done")])
    report, sleeps, _ = _run(wt, model)
    assert (report.status, report.steps, report.reason, sleeps) == ("success", 1, "", [0.5, 2.0])


def test_a_model_error_fails_at_once(box: tuple[Path, Path]) -> None:
    wt, _ = box
    report, sleeps, out = _run(wt, ScriptedModel([ModelError("invalid api key")]))
    assert (report.status, report.error, report.steps, sleeps) == ("failed", "invalid api key", 1, [])
    assert out == "step 1: model error: invalid api key\n"


def test_a_402_from_the_metering_proxy_is_the_budget_final(box: tuple[Path, Path]) -> None:
    wt, _ = box
    refusal = "flota: budget $0.01 reached: $0.0098 spent (metered by the node), ..."
    write = Completion(
        True, None, (ToolCall("c1", "write_file", json.dumps({"path": "a", "content": "x"})),), 10, 2, 0.0
    )
    report, sleeps, out = _run(wt, ScriptedModel([write, BudgetRefused(refusal), _finish("never asked")]))
    # Not retried, not a step: the run ends partial for the budget, with the proxy's line.
    assert (report.status, report.reason, report.error, report.steps, sleeps) == (
        "partial",
        "budget",
        refusal,
        1,
        [],
    )
    assert out.endswith(f"{refusal}\n")
