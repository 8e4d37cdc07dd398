"""The llm agent host: one process with litellm imported, that forks each llm job from itself.

``python -m node_agent.agents.llm.host IDLE_S FD``, started by the node daemon (through a
:class:`~node_agent.process.KeeperClient`) at its first llm job, or at start with
``--warm-agents``. Importing litellm costs a fresh process about 2 s and 150 MB; a job
forked from here has it already, so its first model request goes out at once.

It is the keeper (:mod:`node_agent.keeper`) with another way to start a job, and speaks
the keeper's wire: the job is a forked child in a session of its own, its output
appended to the job's output file, its working directory and environment exactly the
job's, and the host writes its exit status to the job's exit file before reaping it. So
a job outlives a daemon restart as under the keeper: the host keeps it (and leaves once
its daemon has gone and its last job has ended), and the next daemon finds it by pid and
start time. With no job for IDLE_S seconds the host says "leaving" and exits; the next llm
job starts a new one.

What differs from a job started by the keeper: variables litellm reads when it is
imported are the host's (the daemon's environment), not the job's; and the job's
process has the host's initial environment in ``/proc/PID/environ`` (its own
``os.environ`` is the job's), so a cancel reaches it through its process group.
"""

from __future__ import annotations

import contextlib
import gc
import http.server
import importlib
import json
import os
import socket
import sys
import threading
import traceback

from node_agent.keeper import Keeper

__all__ = ["AGENT_ARGV", "Host", "main"]

AGENT_ARGV = ("-m", "node_agent.agents.llm")  # what a job asks for, after the interpreter


_WARM_REPLY = json.dumps(
    {
        "id": "warm",
        "object": "chat.completion",
        "created": 0,
        "model": "flota-warm",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "w", "type": "function", "function": {"name": "finish", "arguments": "{}"}}
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(_WARM_REPLY)))
        self.end_headers()
        self.wfile.write(_WARM_REPLY)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _warm() -> None:
    """Take the agent's own first-call path once, against a throwaway server on loopback
    in this process: litellm's import and everything its first completion imports (the
    OpenAI client, httpx, the response types: about 1.3 s more), so no forked job pays.
    Then no client keeps a connection, and the heap is frozen so that the garbage
    collector of a job does not copy its pages. (litellm's logging worker thread is left:
    a job has none, and its best-effort logging starts another when it needs one.)"""
    from node_agent.agents.llm.model import LiteLLMModel

    importlib.import_module("node_agent.agents.llm.__main__")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        model = LiteLLMModel("openai/flota-warm", f"http://127.0.0.1:{server.server_address[1]}/v1")
        messages = [{"role": "user", "content": "warm up"}]
        model.estimate_usd(messages, 16)
        model.complete(messages, 16, 10.0)
    except Exception as exc:  # a job still works, only colder
        print(f"flota agent host: warming up failed: {exc}", file=sys.stderr)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    import litellm

    with contextlib.suppress(Exception):
        litellm.in_memory_llm_clients_cache.flush_cache()  # type: ignore[no-untyped-call]
    gc.collect()
    gc.freeze()


class Host(Keeper):
    """The keeper whose jobs are forks of itself running the llm agent."""

    def launch(self, argv: list[str], cwd: str, env: dict[str, str], output: str) -> int:
        if tuple(argv[1:]) != AGENT_ARGV:
            raise ValueError(f"the agent host runs only the llm agent, not {argv!r}")
        if any("\0" in k or "\0" in v or "=" in k for k, v in env.items()):
            raise ValueError("embedded null byte")
        if not os.path.isdir(cwd):
            raise FileNotFoundError(2, "No such file or directory", cwd)
        out = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            os.close(out)
            return pid
        self._child(out, cwd, env)  # never returns
        return 0

    def _child(self, out: int, cwd: str, env: dict[str, str]) -> None:
        code = 1
        try:
            os.setsid()
            for key in list(self.selector.get_map().values()):
                if key.data is not None:
                    os.close(key.fd)  # other jobs' pidfds
            self.selector.close()
            self.sock.close()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.close(devnull)
            os.close(out)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            sys.argv = [sys.argv[0]]
            agent = sys.modules["node_agent.agents.llm.__main__"]
            code = agent.main()
        except BaseException:
            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)  # as the agent's own process does: no exit handlers


def main(argv: list[str]) -> int:
    try:
        idle_s, fd = float(argv[1]), int(argv[2])
    except (IndexError, ValueError):
        print(
            "usage: python -m node_agent.agents.llm.host IDLE_S FD (the node daemon starts it)",
            file=sys.stderr,
        )
        return 2
    sock = socket.socket(fileno=fd)
    _warm()
    Host(sock).run(idle_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
