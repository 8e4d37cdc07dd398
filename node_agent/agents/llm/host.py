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
import importlib
import os
import socket
import sys
import traceback

from node_agent.keeper import Keeper

__all__ = ["AGENT_ARGV", "Host", "main"]

AGENT_ARGV = ("-m", "node_agent.agents.llm")  # what a job asks for, after the interpreter


def _warm() -> None:
    """Import what every llm job needs, so that no forked job pays for it."""
    importlib.import_module("node_agent.agents.llm.__main__")
    import litellm  # noqa: F401

    with contextlib.suppress(Exception):  # the token counter's first use loads its tables
        litellm.token_counter(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])


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
