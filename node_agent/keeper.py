"""The keeper: the parent of a node's job processes, so that their exit status outlives the daemon.

The daemon starts one keeper (at its first job): a small process in a session of its own,
on the standard library alone (``python -I -S keeper.py FD``). The daemon asks it over a
socket pair to start a command; the keeper starts it in a new session with its output
appended to a file, journals its pid and start time (the ``proc`` file: so a daemon that
dies while it waits for the reply still finds the job), replies with them, and when the command ends writes
its status to the job's exit file *before* reaping it, then tells the daemon. So while a
job's process exists its status may still be coming, and once it is gone its status is on
disk: a daemon that crashed and came back finds the job again by pid and start time, waits
for it (pidfd) and reads the file, with no wrapper process per job.

The keeper leaves when its daemon has gone and its last job has ended. A keeper that is
killed takes no job with it; a job that ends after that has no recorded status.

Wire, one JSON object per line each way:
  daemon -> keeper  {"id": n, "argv": [...], "cwd": s, "env": {...}, "output": s, "exit": s, "proc": s}
  keeper -> daemon  {"id": n, "pid": p, "create_time": t, "spawned_at": t}  or  {"id": n, "error": s}
                    {"ended": p, "code": c}   (the exit status, or -N for signal N)
                    {"leaving": true}         (idle, with no job: it reads nothing more and exits;
                                               a request it has not answered, it never saw)

The llm agent host (:mod:`node_agent.agents.llm.host`) is this program with another
``launch``: it forks the job from itself, litellm already imported, and leaves when idle.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["Keeper", "boot_time", "create_time", "main", "status_of"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_SEND_TIMEOUT_S = 30.0  # a daemon that reads nothing for this long counts as gone


def boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return 0.0


def create_time(pid: int, boot: float) -> float:
    """A process's start time as psutil computes it (boot time + start ticks / CLK_TCK)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    return boot + int(stat.rsplit(b")", 1)[1].split()[19]) / _CLK_TCK


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def status_of(info: os.waitid_result) -> int:
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _watch(pid: int) -> int:
    readable, writable = os.pipe()

    def wait() -> None:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        os.close(writable)

    threading.Thread(target=wait, daemon=True).start()
    return readable


class Keeper:
    """The keeper program: starts jobs, records their status, reaps them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(_SEND_TIMEOUT_S)
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ, None)
        self.connected = True
        self.children = 0
        self.boot = boot_time()
        self.idle_since = time.monotonic()
        self._buffer = b""

    def run(self, idle_s: float = 0.0) -> None:
        """Until the daemon has gone and the last job ended; with ``idle_s``, also once no
        job has run for that long (it says "leaving" first, and reads nothing more)."""
        while self.connected or self.children:
            timeout = None
            if idle_s > 0 and not self.children:
                timeout = self.idle_since + idle_s - time.monotonic()
                if timeout <= 0:
                    self._send({"leaving": True})
                    self._disconnect()
                    break
            for key, _ in self.selector.select(timeout):
                if key.data is None:
                    self._receive()
                else:
                    self._ended(key.fd, *key.data)

    def _receive(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            data = b""
        if not data:
            self._disconnect()
            return
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            try:
                request = json.loads(line)
                reply = self._start(request)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # only our daemon writes here
                reply = {"id": -1, "error": f"bad request: {exc}"}
            self.idle_since = time.monotonic()
            self._send(reply)

    def launch(self, argv: list[str], cwd: str, env: dict[str, str], output: str) -> int:
        """Start the job in a session of its own, its output appended to ``output``: its pid.
        Raises OSError or ValueError when it cannot start."""
        with open(output, "ab", buffering=0) as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        proc.returncode = 0  # reaped by pid below, not by this object
        return proc.pid

    def _start(self, request: dict[str, Any]) -> dict[str, object]:
        argv = [str(arg) for arg in request["argv"]]
        env = {str(name): str(value) for name, value in request["env"].items()}
        try:
            pid = self.launch(argv, str(request["cwd"]), env, str(request["output"]))
        except (OSError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return {"id": request["id"], "error": detail}
        try:
            ended = os.pidfd_open(pid)  # readable once it has ended
        except (OSError, AttributeError):  # no pidfd (Linux < 5.3): a thread waits, then says so
            ended = _watch(pid)
        self.selector.register(ended, selectors.EVENT_READ, (pid, str(request["exit"])))
        self.children += 1
        started, spawned_at = create_time(pid, self.boot), time.time()
        reply: dict[str, object] = {"id": request["id"], "pid": pid, "create_time": started}
        reply["spawned_at"] = spawned_at
        if request.get("proc"):  # the format of node_agent.journal.Journal.spawned
            try:
                _write(str(request["proc"]), f"{pid} {started!r} {spawned_at!r}")
            except OSError as exc:
                reply["proc_error"] = exc.strerror or str(exc)
        return reply

    def _ended(self, fd: int, pid: int, exit_file: str) -> None:
        self.selector.unregister(fd)
        os.close(fd)
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # still a zombie: not yet reaped
        code = status_of(info) if info is not None else -1
        try:
            _write(exit_file, f"{code}\n")
        except OSError:
            pass  # its journal directory is gone: nobody will ask
        os.waitpid(pid, 0)  # reaped only now: a process that is gone has its status on disk
        self.children -= 1
        self.idle_since = time.monotonic()
        self._send({"ended": pid, "code": code})

    def _send(self, message: dict[str, object]) -> None:
        if not self.connected:
            return
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:  # the daemon is gone or stuck: go on reaping
            self._disconnect()

    def _disconnect(self) -> None:
        if self.connected:
            self.connected = False
            self.selector.unregister(self.sock)
            self.sock.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: keeper.py FD (started by the node daemon)", file=sys.stderr)
        return 2
    Keeper(socket.socket(fileno=int(argv[1]))).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
