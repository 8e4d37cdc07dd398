"""The agent loop: model calls and tool calls until the task is done or a limit is hit.

One step is one model call: the model answers with tool calls, they run, their results go
back, until the model calls ``finish`` (status "success"), the steps, the budget or the
time run out (status "partial", with the reason: an :class:`EndReason` the coordinator
reads, and a line for people), or something cannot go on (status "failed"). One line per
step goes to ``out``.

Budget: before each call its cost is estimated (:meth:`Model.estimate_usd`) and the call
is not made when spent + estimate would pass the budget; what a reply cost is added after.

Error handling: the model's mistakes (no choices, an empty message, text instead of a tool
call, arguments that are not JSON, an unknown tool) are told back to the model and count a
step; text twice in a row is taken as the model's final answer. Provider hiccups
(:class:`TransientModelError`) are retried after a backoff and count a step too; 3 bad
replies in a row end the run as "failed". A call that could not connect to the model
server at all (:class:`Unreachable`: refused, a name that does not resolve, TLS) is no
step: it is tried again after the same backoff, and after :data:`MAX_UNREACHABLE` tries
in a row the run is "failed" with that line (reason model_unreachable). A
:class:`ModelError` fails at once. An :class:`Interrupted` ends the run as "partial";
:func:`run` returns a report, always.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO

from node_agent.agents.llm.contract import Config, Report
from node_agent.agents.llm.errors import (
    BudgetRefused,
    Interrupted,
    ModelError,
    ModelTimeout,
    TransientModelError,
    Unreachable,
)
from node_agent.agents.llm.model import Completion, Model, ToolCall
from node_agent.agents.llm.tools import TOOL_NAMES, Toolbox, describe_call
from protos.contract import EndReason, ResultStatus

__all__ = ["MAX_BAD_IN_A_ROW", "MAX_UNREACHABLE", "SYSTEM_PROMPT", "one_line", "run"]

MAX_BAD_IN_A_ROW: Final = 3
MAX_UNREACHABLE: Final = 3  # tries in a row with no connection to the model server
_BACKOFF_S: Final = (0.5, 2.0, 5.0)  # before retrying after the 1st, 2nd... provider error

SYSTEM_PROMPT: Final = """\
You are a coding agent working in a git worktree (your current directory). Do the task \
you are given by calling tools; every reply must call at least one tool.

Tools:
- list_files(path="."): list files under a directory (recursively).
- read_file(path, offset=0, limit=400): read lines of a text file.
- write_file(path, content): create or overwrite a file with the whole content.
- edit_file(path, old, new): replace the exact text `old` (which must occur exactly once \
in the file) with `new`. Read the file first and copy `old` exactly.
- run_command(command, timeout_s=120): run a bash command in the worktree (no input; \
output is truncated). Use it to run tests, linters, git status, and so on.
- finish(summary): call this when the task is done (or cannot be done), with a short \
summary of what you changed.

All paths are relative to the worktree root; you cannot reach files outside it. Do not \
commit: your changes are collected from the worktree after you finish. Keep changes \
focused on the task."""


@dataclass
class _Run:
    config: Config
    started: float
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    answer: str = ""

    def report(
        self, status: ResultStatus, error: str | None, now: float, reason: EndReason = EndReason.NONE
    ) -> Report:
        return Report(
            status=status,
            error=error,
            steps=self.steps,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            cost_usd=round(self.cost_usd, 8),
            answer=self.answer,
            model=self.config.model,
            duration_s=round(now - self.started, 3),
            reason=reason,
        )


def one_line(text: str, width: int = 120) -> str:
    """``text`` on one line, cut to ``width`` characters (for the step log)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def run(
    config: Config,
    model: Model,
    toolbox: Toolbox,
    out: TextIO,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    started: float | None = None,
) -> Report:
    """The agent loop; its report (an :class:`Interrupted` ends it as "partial")."""
    state = _Run(config, clock() if started is None else started)
    try:
        return _loop(config, model, toolbox, out, clock, sleep, state)
    except Interrupted as exc:
        print(f"step {state.steps}: interrupted by {exc}", file=out, flush=True)
        return state.report(ResultStatus.PARTIAL, f"interrupted by {exc}", clock())
    except Exception as exc:  # a bug: the counts so far still reach the report
        return state.report(ResultStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}", clock())


def _loop(
    config: Config,
    model: Model,
    toolbox: Toolbox,
    out: TextIO,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    state: _Run,
) -> Report:
    deadline = state.started + config.timeout_s if config.timeout_s > 0 else None
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": config.prompt},
    ]
    bad_in_a_row = 0
    errors_in_a_row = 0  # provider errors, for the backoff
    unreachable = 0  # tries in a row that could not connect to the model server
    last_was_text = False  # the previous reply was text without a tool call

    def say(line: str) -> None:
        print(f"step {state.steps}: {line}", file=out, flush=True)

    def bad(reason: str) -> Report | None:
        nonlocal bad_in_a_row
        bad_in_a_row += 1
        say(f"bad reply ({bad_in_a_row}/{MAX_BAD_IN_A_ROW}): {reason}")
        if bad_in_a_row >= MAX_BAD_IN_A_ROW:
            return state.report(
                ResultStatus.FAILED, f"{MAX_BAD_IN_A_ROW} bad model replies in a row; last: {reason}", clock()
            )
        return None

    while True:
        if state.steps >= config.max_steps:
            return state.report(
                ResultStatus.PARTIAL, f"max steps reached ({config.max_steps})", clock(), EndReason.MAX_STEPS
            )
        time_left = None if deadline is None else deadline - clock()
        if time_left is not None and time_left <= 0:
            return state.report(
                ResultStatus.PARTIAL, f"timeout after {config.timeout_s:g} s", clock(), EndReason.TIME_LIMIT
            )
        max_tokens = min(config.max_output_tokens, model.max_output_tokens or config.max_output_tokens)
        if config.budget_usd > 0 and model.priced:
            estimate = model.estimate_usd(messages, max_tokens)
            if state.cost_usd + estimate > config.budget_usd:
                return state.report(
                    ResultStatus.PARTIAL,
                    f"budget: the next call could cost ${estimate:.6f}, spent ${state.cost_usd:.6f} "
                    f"of ${config.budget_usd:g}",
                    clock(),
                    EndReason.BUDGET,
                )
        state.steps += 1
        try:
            reply = model.complete(messages, max_tokens, time_left)
        except ModelTimeout as exc:
            if deadline is not None and clock() >= deadline - 0.01:
                say("model call cut off by the timeout")
                return state.report(
                    ResultStatus.PARTIAL,
                    f"timeout after {config.timeout_s:g} s",
                    clock(),
                    EndReason.TIME_LIMIT,
                )
            if (failed := bad(f"model call timed out: {exc}")) is not None:
                return failed
            continue
        except Unreachable as exc:
            state.steps -= 1  # the call never reached a model: not a step
            unreachable += 1
            if unreachable >= MAX_UNREACHABLE:
                say(f"{exc} ({unreachable} tries)")
                return state.report(ResultStatus.FAILED, str(exc), clock(), EndReason.MODEL_UNREACHABLE)
            pause = _BACKOFF_S[min(unreachable - 1, len(_BACKOFF_S) - 1)]
            if deadline is not None:
                pause = min(pause, max(deadline - clock(), 0.0))
            say(f"{exc}; trying again in {pause:g} s")
            sleep(pause)
            continue
        except TransientModelError as exc:
            if (failed := bad(f"provider error: {one_line(str(exc), 300)}")) is not None:
                return failed
            pause = _BACKOFF_S[min(errors_in_a_row, len(_BACKOFF_S) - 1)]
            errors_in_a_row += 1
            if deadline is not None:
                pause = min(pause, max(deadline - clock(), 0.0))
            sleep(pause)
            continue
        except BudgetRefused as exc:  # the node's metering proxy keeps the budget
            state.steps -= 1  # refused before any model saw it: not a step
            say(one_line(str(exc)))
            return state.report(ResultStatus.PARTIAL, str(exc), clock(), EndReason.BUDGET)
        except ModelError as exc:
            say(f"model error: {one_line(str(exc))}")
            return state.report(ResultStatus.FAILED, str(exc), clock())
        errors_in_a_row = unreachable = 0
        state.tokens_in += reply.tokens_in
        state.tokens_out += reply.tokens_out
        state.cost_usd += reply.cost_usd
        content = (reply.content or "").strip()
        if content:
            state.answer = content
        if not reply.has_choice:
            last_was_text = False
            if (failed := bad("the reply had no choices")) is not None:
                return failed
            messages.append(
                {"role": "user", "content": "Your last reply was empty (no choices). Call a tool."}
            )
            continue
        if not reply.tool_calls:
            if content and last_was_text:
                # Told once to use the tools, the model answers in text again: that is its
                # answer (weak local models never call tools).
                say(f"answered in text: {one_line(content, 80)}")
                return state.report(ResultStatus.SUCCESS, None, clock())
            last_was_text = bool(content)
            if content:
                messages.append({"role": "assistant", "content": content})
                failed = bad(f"text without a tool call: {one_line(content, 80)}")
                nudge = "Reply by calling a tool. When the task is done, call finish(summary)."
            else:
                failed = bad("an empty message")
                nudge = "Your last reply was empty. Call a tool; when the task is done, call finish(summary)."
            if failed is not None:
                return failed
            messages.append({"role": "user", "content": nudge})
            continue
        last_was_text = False
        finished, useful, line = _do_calls(reply, messages, toolbox, deadline, clock, state.steps)
        if useful:
            bad_in_a_row = 0
            say(line)
        elif (failed := bad(line)) is not None:
            return failed
        if finished is not None:
            state.answer = finished
            return state.report(ResultStatus.SUCCESS, None, clock())


def _do_calls(
    reply: Completion,
    messages: list[dict[str, Any]],
    toolbox: Toolbox,
    deadline: float | None,
    clock: Callable[[], float],
    step: int,
) -> tuple[str | None, bool, str]:
    """Run the reply's tool calls in order: (finish summary or None, whether any call was
    well-formed, the step's log line)."""
    parsed: list[tuple[ToolCall, dict[str, Any], str | None, str]] = []  # call, args, problem, short
    for i, tc in enumerate(reply.tool_calls):
        tc = ToolCall(tc.id or f"call_{step}_{i}", tc.name, tc.arguments)
        args: Any = {}
        problem = short = None
        if tc.name not in TOOL_NAMES:
            problem = f"unknown tool {tc.name!r}; the tools are: {', '.join(sorted(TOOL_NAMES))}"
            short = f"unknown tool {one_line(tc.name, 40)!r}"
        else:
            try:
                args = json.loads(tc.arguments) if tc.arguments.strip() else {}
            except ValueError as exc:
                problem = f"the arguments are not valid JSON ({exc}): {one_line(tc.arguments, 200)}"
                short = f"{tc.name} with invalid JSON arguments"
            else:
                if not isinstance(args, dict):
                    problem = "the arguments must be a JSON object"
                    short = f"{tc.name} with arguments that are not an object"
        parsed.append((tc, args if problem is None else {}, problem, short or ""))
    # History keeps only well-formed JSON: some providers re-parse earlier arguments.
    messages.append(
        {
            "role": "assistant",
            "content": reply.content or None,
            "tool_calls": [
                {
                    "id": tc.id,
                    "type": "function",
                    "function": {"name": tc.name, "arguments": tc.arguments if problem is None else "{}"},
                }
                for tc, _, problem, _ in parsed
            ],
        }
    )
    parts: list[str] = []
    useful = False
    finished: str | None = None
    for tc, args, problem, short in parsed:
        if finished is not None:
            output = "error: not run: finish was called before this call"
        elif problem is not None:
            output = f"error: {problem}"
            parts.append(short)
        else:
            time_left = None if deadline is None else deadline - clock()
            result = toolbox.call(tc.name, args, time_left)
            output = result.output
            useful = True  # a known tool with good arguments is progress, even if it failed
            line = describe_call(tc.name, args)
            if not result.ok:
                line += f" ({one_line(result.output, 80)})"
            parts.append(line)
            if result.finished:
                finished = result.output
        messages.append({"role": "tool", "tool_call_id": tc.id, "content": output})
    text = one_line(reply.content or "", 80)
    return finished, useful, "; ".join(parts) + (f"  | {text}" if text else "")
