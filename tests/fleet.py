"""Real daemons for tests: a coordinator and node daemons as separate processes, each
with its own state directory, driven through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    check: Callable[[], Any], timeout: float = 20.0, what: str = "condition", period: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def git(*args: str, cwd: Path | str | None = None) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_repo(base: Path, files: dict[str, str] | None = None) -> tuple[Path, Path]:
    """A working repository with one commit and a bare remote as origin."""
    remote, work = base / "remote.git", base / "work"
    git("init", "-q", "--bare", str(remote))
    git("init", "-q", "-b", "main", str(work))
    for name, text in (files or {"README.md": "sample\n"}).items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "initial", cwd=work)
    git("remote", "add", "origin", str(remote), cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    return work, remote


class Fleet:
    """``cli_prefix`` runs every CLI call under it (e.g. ``ip netns exec HOST`` so the CLI
    sits in the coordinator's namespace); ``prefix`` does the same for one daemon."""

    def __init__(self, home: Path, python: str = sys.executable, cli_prefix: Sequence[str] = ()) -> None:
        self.home = home
        self.python = python
        self.cli_prefix = list(cli_prefix)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        home.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "FLOTA_HOME": str(self.home), "PYTHONPATH": str(ROOT)}

    def spawn(
        self, key: str, argv: Sequence[str], prefix: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.home / f"{key}.log"
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [*prefix, self.python, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.env, **(env or {})},
                cwd=self.home,
            )
        self.procs[key], self.logs[key] = proc, log
        return proc

    def log(self, key: str) -> str:
        return self.logs[key].read_text(errors="replace")

    def start_coordinator(
        self,
        *args: str,
        listen: str = "127.0.0.1:0",
        prefix: Sequence[str] = (),
        mdns: bool = False,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        state = self.home / "coordinator" / "coordinator.json"
        state.unlink(missing_ok=True)
        argv = ["-m", "coordinator", "start", "--listen", listen, "--join-port", "0"]
        proc = self.spawn("coordinator", [*argv, *([] if mdns else ["--no-mdns"]), *args], prefix, env)

        def ready() -> dict[str, Any] | None:
            assert proc.poll() is None, f"coordinator exited: {self.log('coordinator')}"
            try:
                data = json.loads(state.read_text())
            except (OSError, ValueError):
                return None
            return data if data.get("pid") else None

        return wait_until(ready, what="coordinator start")

    def flota(
        self,
        *args: str,
        check: bool = False,
        timeout: float = 120,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.cli_prefix, self.python, "-m", "cli", *args],
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            cwd=cwd or self.home,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"flota {' '.join(args)} exited {result.returncode}: {result.stderr}{result.stdout}"
            )
        return result

    def json(self, *args: str, **kw: Any) -> Any:
        result = self.flota("--json", *args, **kw)
        try:
            return json.loads(result.stdout)
        except ValueError as exc:
            raise AssertionError(
                f"not JSON from flota {' '.join(args)}: {result.stdout!r} {result.stderr!r}"
            ) from exc

    def token(self) -> tuple[str, str]:
        data = self.json("token", "create", check=True)
        return data["join_address"], data["token"]

    def join(self, name: str, prefix: Sequence[str] = (), state: Path | None = None) -> Path:
        state = state or self.home / "nodes" / name
        address, token = self.token()
        subprocess.run(
            [
                *prefix,
                self.python,
                "-m",
                "node_agent",
                "join",
                address,
                "--token",
                token,
                "--name",
                name,
                "--state-dir",
                str(state),
            ],
            check=True,
            capture_output=True,
            env=self.env,
            timeout=60,
        )
        return state

    def start_node(
        self,
        name: str,
        *args: str,
        join: bool = True,
        wait: bool = True,
        listen: str = "127.0.0.1:0",
        prefix: Sequence[str] = (),
        mdns: bool = False,
        state: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        state = self.join(name, prefix, state) if join else state or self.home / "nodes" / name
        proc = self.spawn(
            name,
            [
                "-m",
                "node_agent",
                "start",
                "--state-dir",
                str(state),
                "--name",
                name,
                "--listen",
                listen,
                *([] if mdns else ["--no-mdns"]),
                *args,
            ],
            prefix,
            env,
        )
        if wait:
            self.wait_node(name, "online")
        return proc

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["info"]["name"]: n for n in self.json("nodes")}

    def wait_node(self, name: str, state: str, timeout: float = 20) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            for key, proc in self.procs.items():
                if key == name and state == "online":
                    assert proc.poll() is None, f"{name} exited: {self.log(name)}"
            node = self.nodes().get(name)
            return node if node and node["state"] == state else None

        return wait_until(check, timeout, what=f"node {name} {state}")

    def stop(self, key: str, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        proc = self.procs.get(key)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

    def close(self) -> None:
        for key in [k for k in self.procs if k != "coordinator"] + ["coordinator"]:
            if key in self.procs:
                self.stop(key)
