"""The llm agent's process: ``python -m node_agent.agents.llm``.

It runs in its own process (the daemon never imports litellm: DESIGN rule 7) with the
job's worktree as its root and cwd, configured only through the environment
(:mod:`contract` lists the variables). It writes the report, prints one last line
("status: error or answer") and exits 0 success, 3 partial, 1 failed, 2 bad input (a
missing or malformed variable, a model litellm cannot route, a missing API key).

Error handling: SIGTERM/SIGINT end the run as "partial" (exit 3) after killing the
running command; anything else that goes wrong still leaves a "failed" report. Nothing
here raises past :func:`main`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TextIO

from node_agent.agents.llm.contract import (
    EXIT_BAD_INPUT,
    EXIT_CODES,
    EXIT_FAILED,
    Config,
    Report,
    write_report,
)
from node_agent.agents.llm.errors import BadInput, Interrupted
from node_agent.agents.llm.loop import one_line, run
from node_agent.agents.llm.model import LiteLLMModel
from node_agent.agents.llm.tools import Toolbox
from protos.contract import ResultStatus

__all__ = ["main"]


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _bad_input(exc: BadInput, env: Mapping[str, str], report: str | None) -> int:
    print(f"flota llm agent: {exc}", file=sys.stderr, flush=True)
    if report and Path(report).parent.is_dir():
        with contextlib.suppress(OSError):
            write_report(
                Path(report), Report.early(ResultStatus.FAILED, str(exc), env.get("FLOTA_LLM_MODEL", ""))
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
            state = Report.early(ResultStatus.PARTIAL, f"interrupted by {exc}", config.model)
        except Exception as exc:  # a bug or an environment problem: still leave a report
            state = Report.early(ResultStatus.FAILED, f"{type(exc).__name__}: {exc}", config.model)
        finally:
            with contextlib.suppress(Interrupted):
                toolbox.close()
        if state.duration_s == 0.0:
            state.duration_s = round(time.monotonic() - started, 3)
        line = (
            f"{state.status}: {state.error}"
            if state.error
            else f"{state.status}: {one_line(state.answer, 200)}"
        )
        print(line, file=out, flush=True)
        if config.report is not None:
            try:
                write_report(config.report, state)
            except OSError as exc:
                print(f"flota llm agent: cannot write the report {config.report}: {exc}", file=sys.stderr)
                return EXIT_FAILED
        return EXIT_CODES[state.status]
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
