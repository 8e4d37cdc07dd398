"""The built-in coding agent: ``python -m node_agent.agents.llm``, a tool loop on litellm.

It runs in its own process (the daemon never imports litellm: DESIGN rule 7) with the
job's worktree as its root and cwd, and is configured only through the environment:

    FLOTA_WORKTREE        the worktree (required): the root every tool is confined to
    FLOTA_LLM_MODEL       a litellm model string (required): openai/..., anthropic/...,
                          ollama/..., lm_studio/..., or any name served at the API base
    FLOTA_LLM_PROMPT      the task (required)
    FLOTA_LLM_MAX_STEPS   model calls allowed (default 30)
    FLOTA_LLM_BUDGET_USD  spending cap in USD (default 0: no cap)
    FLOTA_LLM_TIMEOUT_S   wall-clock cap in seconds (default 0: none)
    FLOTA_LLM_REPORT      where to write the JSON report at the end (optional; atomic)
    FLOTA_LLM_API_BASE    an OpenAI-compatible server, e.g. http://127.0.0.1:1234/v1 (optional)
    FLOTA_LLM_MAX_OUTPUT_TOKENS  max_tokens asked for per call (default 4096)

API keys come in the providers' usual variables (OPENAI_API_KEY, ANTHROPIC_API_KEY...).

One step is one model call: the model answers with tool calls, they run, their results go
back, until the model calls ``finish`` (status "success"), the steps, the budget or the
time run out (status "partial", with the reason), or something cannot go on (status
"failed"). One line per step goes to stdout. Exit codes: 0 success, 3 partial, 1 failed,
2 bad input (a missing or malformed variable).

Budget: before each call its cost is estimated (prompt tokens by litellm's token counter
times the input price, plus the max_tokens asked for times the output price) and the call
is not made when spent + estimate would pass the budget. Actual cost comes from litellm's
per-response cost (usage times the price map). A model without a price costs 0.

Error handling: the model's mistakes (no choices, an empty message, text instead of a tool
call, arguments that are not JSON, an unknown tool) are told back to the model and count a
step; text twice in a row is taken as the model's final answer. Provider hiccups (5xx,
rate limit, connection, an unparseable response) are retried and count a step too; 3 bad
replies in a row end the run as "failed". Authentication, bad request, unknown model and
context overflow fail at once. SIGTERM/SIGINT end the run as "partial" (exit 3) after
killing the running command. Nothing here raises past :func:`main`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, Protocol, TextIO, TypeVar

from node_agent.agents.tools import TOOL_NAMES, TOOL_SCHEMAS, Toolbox, describe_call

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_PARTIAL",
    "EXIT_SUCCESS",
    "BadInput",
    "Completion",
    "Config",
    "Model",
    "ModelError",
    "ModelTimeout",
    "Report",
    "ToolCall",
    "TransientModelError",
    "main",
    "run",
    "write_report",
]

EXIT_SUCCESS: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
EXIT_PARTIAL: Final = 3

DEFAULT_MAX_STEPS: Final = 30
DEFAULT_MAX_OUTPUT_TOKENS: Final = 4096
MAX_BAD_IN_A_ROW: Final = 3
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


class BadInput(Exception):
    """The environment does not describe a run (a variable is missing or malformed)."""


class ModelError(Exception):
    """The model provider refused in a way retrying cannot fix (auth, bad request, ...)."""


class TransientModelError(Exception):
    """The provider failed this time (5xx, rate limit, connection, a garbled response)."""


class ModelTimeout(TransientModelError):
    """The call did not answer within the time it was given."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived (a BaseException, so no library's ``except Exception`` eats it)."""


@dataclass(frozen=True)
class Config:
    """One run, as read from the environment."""

    worktree: Path
    model: str
    prompt: str
    max_steps: int = DEFAULT_MAX_STEPS
    budget_usd: float = 0.0
    timeout_s: float = 0.0
    report: Path | None = None
    api_base: str | None = None
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Raises :class:`BadInput` naming the first variable that is wrong."""
        missing = [k for k in ("FLOTA_WORKTREE", "FLOTA_LLM_MODEL", "FLOTA_LLM_PROMPT") if not env.get(k)]
        if missing:
            raise BadInput(
                f"missing environment variable{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"
            )
        worktree = Path(env["FLOTA_WORKTREE"])
        if not worktree.is_dir():
            raise BadInput(f"FLOTA_WORKTREE is not a directory: {worktree}")
        report = env.get("FLOTA_LLM_REPORT") or None
        if report is not None and not Path(report).parent.is_dir():
            raise BadInput(f"FLOTA_LLM_REPORT: no such directory: {Path(report).parent}")
        return cls(
            worktree=worktree,
            model=env["FLOTA_LLM_MODEL"].strip(),
            prompt=env["FLOTA_LLM_PROMPT"],
            max_steps=_number(env, "FLOTA_LLM_MAX_STEPS", int, DEFAULT_MAX_STEPS, minimum=1),
            budget_usd=_number(env, "FLOTA_LLM_BUDGET_USD", float, 0.0, minimum=0),
            timeout_s=_number(env, "FLOTA_LLM_TIMEOUT_S", float, 0.0, minimum=0),
            report=Path(report) if report else None,
            api_base=(env.get("FLOTA_LLM_API_BASE") or "").strip() or None,
            max_output_tokens=_number(
                env, "FLOTA_LLM_MAX_OUTPUT_TOKENS", int, DEFAULT_MAX_OUTPUT_TOKENS, minimum=1
            ),
        )


_N = TypeVar("_N", int, float)


def _number(env: Mapping[str, str], name: str, kind: type[_N], default: _N, minimum: _N) -> _N:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise BadInput(f"{name} must be {'an integer' if kind is int else 'a number'}, not {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")) or value < minimum:
        raise BadInput(f"{name} must be a number >= {minimum}, not {raw!r}")
    return value


@dataclass
class Report:
    """The run's outcome, written as JSON to FLOTA_LLM_REPORT."""

    status: str  # "success" | "partial" | "failed"
    error: str | None
    steps: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    answer: str
    model: str
    duration_s: float


def write_report(path: Path, report: Report) -> None:
    """Write atomically: a reader sees the old file, or none, or the whole new one."""
    data = json.dumps(asdict(report), indent=2).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- the model seam ------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # as the model sent it: JSON, hopefully


@dataclass(frozen=True)
class Completion:
    """One reply, reduced to what the loop needs."""

    has_choice: bool
    content: str | None
    tool_calls: tuple[ToolCall, ...]
    tokens_in: int
    tokens_out: int
    cost_usd: float


class Model(Protocol):
    name: str
    priced: bool  # False: the price map knows no price, the model costs nothing
    max_output_tokens: int | None  # the model's own cap, when known

    def estimate_usd(self, messages: Sequence[Mapping[str, Any]], max_tokens: int) -> float: ...

    def complete(
        self, messages: Sequence[Mapping[str, Any]], max_tokens: int, timeout_s: float | None
    ) -> Completion: ...


# --- the loop --------------------------------------------------------------------------


@dataclass
class _Run:
    config: Config
    started: float
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    answer: str = ""

    def report(self, status: str, error: str | None, now: float) -> Report:
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
        )


def _short(text: str, width: int = 120) -> str:
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
        return state.report("partial", f"interrupted by {exc}", clock())
    except Exception as exc:  # a bug: the counts so far still reach the report
        return state.report("failed", f"internal error: {type(exc).__name__}: {exc}", clock())


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
    last_was_text = False  # the previous reply was text without a tool call

    def say(line: str) -> None:
        print(f"step {state.steps}: {line}", file=out, flush=True)

    def bad(reason: str) -> Report | None:
        nonlocal bad_in_a_row
        bad_in_a_row += 1
        say(f"bad reply ({bad_in_a_row}/{MAX_BAD_IN_A_ROW}): {reason}")
        if bad_in_a_row >= MAX_BAD_IN_A_ROW:
            return state.report(
                "failed", f"{MAX_BAD_IN_A_ROW} bad model replies in a row; last: {reason}", clock()
            )
        return None

    while True:
        if state.steps >= config.max_steps:
            return state.report("partial", f"max steps reached ({config.max_steps})", clock())
        time_left = None if deadline is None else deadline - clock()
        if time_left is not None and time_left <= 0:
            return state.report("partial", f"timeout after {config.timeout_s:g} s", clock())
        max_tokens = min(config.max_output_tokens, model.max_output_tokens or config.max_output_tokens)
        if config.budget_usd > 0 and model.priced:
            estimate = model.estimate_usd(messages, max_tokens)
            if state.cost_usd + estimate > config.budget_usd:
                return state.report(
                    "partial",
                    f"budget: the next call could cost ${estimate:.6f}, spent ${state.cost_usd:.6f} "
                    f"of ${config.budget_usd:g}",
                    clock(),
                )
        state.steps += 1
        try:
            reply = model.complete(messages, max_tokens, time_left)
        except ModelTimeout as exc:
            if deadline is not None and clock() >= deadline - 0.01:
                say("model call cut off by the timeout")
                return state.report("partial", f"timeout after {config.timeout_s:g} s", clock())
            if (failed := bad(f"model call timed out: {exc}")) is not None:
                return failed
            continue
        except TransientModelError as exc:
            if (failed := bad(f"provider error: {_short(str(exc), 300)}")) is not None:
                return failed
            pause = _BACKOFF_S[min(errors_in_a_row, len(_BACKOFF_S) - 1)]
            errors_in_a_row += 1
            if deadline is not None:
                pause = min(pause, max(deadline - clock(), 0.0))
            sleep(pause)
            continue
        except ModelError as exc:
            say(f"model error: {_short(str(exc))}")
            return state.report("failed", str(exc), clock())
        errors_in_a_row = 0
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
                say(f"answered in text: {_short(content, 80)}")
                return state.report("success", None, clock())
            last_was_text = bool(content)
            if content:
                messages.append({"role": "assistant", "content": content})
                failed = bad(f"text without a tool call: {_short(content, 80)}")
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
            return state.report("success", None, clock())


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
            short = f"unknown tool {_short(tc.name, 40)!r}"
        else:
            try:
                args = json.loads(tc.arguments) if tc.arguments.strip() else {}
            except ValueError as exc:
                problem = f"the arguments are not valid JSON ({exc}): {_short(tc.arguments, 200)}"
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
                line += f" ({_short(result.output, 80)})"
            parts.append(line)
            if result.finished:
                finished = result.output
        messages.append({"role": "tool", "tool_call_id": tc.id, "content": output})
    text = _short(reply.content or "", 80)
    return finished, useful, "; ".join(parts) + (f"  | {text}" if text else "")


# --- litellm -----------------------------------------------------------------------------


class LiteLLMModel:
    """:class:`Model` on litellm (imported here, when the agent runs, never at import)."""

    def __init__(self, name: str, api_base: str | None) -> None:
        """Raises :class:`BadInput` for a model litellm cannot route or a missing API key.

        Provider keys are read by litellm from the process environment (os.environ).
        """
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price map
        import litellm

        litellm.suppress_debug_info = True  # no "Provider List" banners on stdout
        litellm.disable_hf_tokenizer_download = True  # count tokens with tiktoken, offline
        litellm.drop_params = True
        for logger_name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
            logging.getLogger(logger_name).setLevel(logging.ERROR)
        self._litellm = litellm
        self.name = name
        self._kwargs: dict[str, Any] = {}
        try:
            _, provider, _, _ = litellm.get_llm_provider(name)
        except Exception:
            if not api_base:
                raise BadInput(
                    f"FLOTA_LLM_MODEL: no known provider in {name!r}; write provider/model "
                    "(openai/gpt-4o, anthropic/..., ollama/...) or set FLOTA_LLM_API_BASE"
                ) from None
            provider = "openai"  # a bare name served at an OpenAI-compatible base
            self._kwargs["custom_llm_provider"] = "openai"
        if api_base:
            self._kwargs["api_base"] = api_base
            if provider == "openai" and not os.environ.get("OPENAI_API_KEY"):
                self._kwargs["api_key"] = "none"  # local servers need none; the client wants one
        else:
            try:
                missing = litellm.validate_environment(name).get("missing_keys") or []
            except Exception:
                missing = []
            keys = [k for k in missing if str(k).endswith("_API_KEY")]  # not bases: they have defaults
            if keys:
                raise BadInput(f"{name} needs {', '.join(keys)} in the environment")
        info: Mapping[str, Any]
        try:
            info = litellm.get_model_info(name, custom_llm_provider=self._kwargs.get("custom_llm_provider"))
        except Exception:  # not in the map: a local or unknown model, which costs nothing
            info = {}
        self._input_price = float(info.get("input_cost_per_token") or 0.0)
        self._output_price = float(info.get("output_cost_per_token") or 0.0)
        self.priced = self._input_price > 0 or self._output_price > 0
        cap = info.get("max_output_tokens")
        self.max_output_tokens = int(cap) if isinstance(cap, int) and cap > 0 else None

    def estimate_usd(self, messages: Sequence[Mapping[str, Any]], max_tokens: int) -> float:
        try:
            tokens = int(
                self._litellm.token_counter(model=self.name, messages=list(messages), tools=TOOL_SCHEMAS)
            )
        except Exception:  # a message shape the counter does not know: count characters
            tokens = len(json.dumps(list(messages))) // 3 + len(json.dumps(TOOL_SCHEMAS)) // 3
        return tokens * self._input_price + max_tokens * self._output_price

    def complete(
        self, messages: Sequence[Mapping[str, Any]], max_tokens: int, timeout_s: float | None
    ) -> Completion:
        litellm = self._litellm
        kwargs = dict(self._kwargs)
        if timeout_s is not None:
            kwargs["timeout"] = max(timeout_s, 0.05)
        try:
            response = litellm.completion(
                model=self.name,
                messages=list(messages),
                tools=TOOL_SCHEMAS,
                max_tokens=max_tokens,
                max_retries=0,  # we retry ourselves, within the deadline
                # litellm 1.106 imports its proxy's MCP gateway (and the absent `mcp`
                # package) whenever tools are passed; ours are plain functions.
                _skip_mcp_handler=True,
                **kwargs,
            )
        except litellm.Timeout as exc:
            raise ModelTimeout(_first_line(exc)) from exc
        except litellm.ContextWindowExceededError as exc:
            raise ModelError(f"context window exceeded: {_first_line(exc)}") from exc
        except (
            litellm.AuthenticationError,
            litellm.PermissionDeniedError,
            litellm.NotFoundError,
            litellm.BadRequestError,
            litellm.UnsupportedParamsError,
        ) as exc:
            raise ModelError(_first_line(exc)) from exc
        except (
            litellm.RateLimitError,
            litellm.APIConnectionError,
            litellm.ServiceUnavailableError,
            litellm.InternalServerError,
            litellm.BadGatewayError,
            litellm.APIError,
        ) as exc:
            raise TransientModelError(_first_line(exc)) from exc
        except Exception as exc:  # anything else litellm lets through: a garbled response
            raise TransientModelError(f"{type(exc).__name__}: {_first_line(exc)}") from exc
        return self._completion(response)

    def _completion(self, response: Any) -> Completion:
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = 0.0
        if self.priced:
            hidden = getattr(response, "_hidden_params", None) or {}
            reported = hidden.get("response_cost") if isinstance(hidden, dict) else None
            if isinstance(reported, int | float):
                cost = float(reported)
            else:
                cost = tokens_in * self._input_price + tokens_out * self._output_price
        choices = getattr(response, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        if message is None:
            return Completion(False, None, (), tokens_in, tokens_out, cost)
        calls = []
        for tc in getattr(message, "tool_calls", None) or []:
            function = getattr(tc, "function", None)
            arguments = getattr(function, "arguments", None)
            if not isinstance(arguments, str):  # some servers send an object
                arguments = json.dumps(arguments) if arguments is not None else ""
            calls.append(
                ToolCall(
                    str(getattr(tc, "id", "") or ""), str(getattr(function, "name", "") or ""), arguments
                )
            )
        content = getattr(message, "content", None)
        return Completion(
            True, content if isinstance(content, str) else None, tuple(calls), tokens_in, tokens_out, cost
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the program -------------------------------------------------------------------------

_EXIT_CODES: Final = {"success": EXIT_SUCCESS, "partial": EXIT_PARTIAL, "failed": EXIT_FAILED}


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _bad_input(exc: BadInput, env: Mapping[str, str], report: str | None) -> int:
    print(f"flota llm agent: {exc}", file=sys.stderr, flush=True)
    if report and Path(report).parent.is_dir():
        with contextlib.suppress(OSError):
            write_report(
                Path(report),
                Report("failed", str(exc), 0, 0, 0, 0.0, "", env.get("FLOTA_LLM_MODEL", ""), 0.0),
            )
    return EXIT_BAD_INPUT


def main(env: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """Run the agent as configured by ``env``; the exit code."""
    started = time.monotonic()
    env = os.environ if env is None else env
    out = sys.stdout if out is None else out
    try:
        config = Config.from_env(env)
    except BadInput as exc:
        return _bad_input(exc, env, env.get("FLOTA_LLM_REPORT"))
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    toolbox = Toolbox(config.worktree, env)
    try:
        try:
            os.chdir(config.worktree)
            model = LiteLLMModel(config.model, config.api_base)
            state = run(config, model, toolbox, out, started=started)
        except BadInput as exc:
            return _bad_input(exc, env, str(config.report) if config.report else None)
        except Interrupted as exc:
            state = Report("partial", f"interrupted by {exc}", 0, 0, 0, 0.0, "", config.model, 0.0)
        except Exception as exc:  # a bug or an environment problem: still leave a report
            state = Report("failed", f"{type(exc).__name__}: {exc}", 0, 0, 0, 0.0, "", config.model, 0.0)
        finally:
            with contextlib.suppress(Interrupted):
                toolbox.close()
        if state.duration_s == 0.0:
            state.duration_s = round(time.monotonic() - started, 3)
        line = (
            f"{state.status}: {state.error}"
            if state.error
            else f"{state.status}: {_short(state.answer, 200)}"
        )
        print(line, file=out, flush=True)
        if config.report is not None:
            try:
                write_report(config.report, state)
            except OSError as exc:
                print(f"flota llm agent: cannot write the report {config.report}: {exc}", file=sys.stderr)
                return EXIT_FAILED
        return _EXIT_CODES[state.status]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip litellm's exit handlers (~0.7 s flushing logging workers we never use): the
    # report is written and the commands' process groups are gone.
    os._exit(code)
