"""`flota up --local N` / `flota down`: a whole fleet on one machine.

A coordinator and N node daemons, each its own process with its own state directory
(`$FLOTA_HOME/local/node-<i>`), port, name and network profile. Nodes are enrolled
through the real join flow the first time; mDNS is off (nothing to discover on
loopback, and nothing to announce to the LAN).

Every daemon runs in a session of its own, so a terminal's signals (Ctrl-C, a closed
window) reach only `up`, which then stops the fleet in order: nodes first, so they say
goodbye, then the coordinator. A foreground `up` owns its fleet: however it ends (SIGINT,
SIGTERM, SIGHUP, an exception) it stops every daemon and waits for each to exit; if it is
killed outright, the kernel sends each daemon SIGTERM (PR_SET_PDEATHSIG, set by a small
shim before the daemon's own interpreter starts, so no code runs between fork and exec).

`down` asks the coordinator first which jobs run (they are cut off, and re-run as a new
attempt at the next `up`), names them, and with `--wait` waits for them to end first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated

import psutil
import typer

from cli.client import EXIT_UNAVAILABLE, Client, CliError, flota_home
from cli.daemon import daemon_env
from cli.options import options
from cli.render import console, nodes_table, print_json, to_dict
from protos import statelock
from protos.contract import RUN_ACTIVE
from protos.flota.v1 import coordinator_pb2 as pb

__all__ = ["down", "down_local", "running_jobs", "up", "up_local"]

NETWORKS = ("home", "vpn", "office")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0  # a daemon's own orderly stop; then SIGKILL
KILL_WAIT_S = 5.0
WAIT_DEFAULT_S = 600.0
PROGRESS_EVERY_S = 5.0
ACTIVE = ("dispatching", "running")  # the job statuses a stop cuts off
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Runs as `python -I -S -c SHIM PARENT ARGV...`: ask for SIGTERM when `up` dies, give up if it
# already has (the shim was orphaned before prctl), then become the daemon (same pid).
_PDEATHSIG_SHIM = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGTERM\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


class _Stopped(BaseException):
    """SIGTERM or SIGHUP reached a foreground `up` (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """While `up` starts or runs: the first SIGINT/SIGTERM/SIGHUP ends it; once it stops its
    fleet, later ones are ignored (a second Ctrl-C must not leave half a fleet behind)."""

    def __init__(self) -> None:
        self.stopping = False
        self._previous = {s: signal.signal(s, self._on_signal) for s in _STOP_SIGNALS}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise _Stopped(signum)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(pid: int, home: Path) -> bool:
    """Is `pid` a flota daemon of this FLOTA_HOME? (A pid file can outlive a reboot, and
    the number may now belong to anything.)"""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.Error, ValueError):
        return False
    text = " ".join(cmdline)
    return ("coordinator" in cmdline or "node_agent" in cmdline) and str(home) in text


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _spawn(argv: list[str], log: Path, detach: bool) -> subprocess.Popen[bytes]:
    shim: list[str] = []
    # Only the main thread spawns daemons: the kernel ties PDEATHSIG to the thread that forked.
    if not detach and sys.platform == "linux":
        shim = ["-I", "-S", "-c", _PDEATHSIG_SHIM, str(os.getpid())]
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *shim, *argv],
            env=daemon_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait_for(
    what: str, check: Callable[[], bool], procs: list[tuple[subprocess.Popen[bytes], Path]]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for proc, log in procs:
            if proc.poll() is not None:
                raise CliError(f"{what}: a daemon exited ({_tail(log)})", EXIT_UNAVAILABLE)
        if check():
            return
        time.sleep(0.05)
    raise CliError(f"{what}: timed out after {START_TIMEOUT_S:.0f}s", EXIT_UNAVAILABLE)


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:  # reap our own children: a zombie still answers kill(pid, 0)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if not any(_alive(p) for p in pids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop(pids: list[int], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait, SIGKILL what is left, and wait until every one has exited."""
    _signal(pids, signal.SIGTERM)
    if not _gone(pids, timeout):
        _signal([p for p in pids if _alive(p)], signal.SIGKILL)
        _gone(pids, KILL_WAIT_S)


def _stop_fleet(coordinator: list[int], nodes: list[int]) -> None:
    _stop(nodes)  # nodes first, so they say goodbye before the coordinator goes
    _stop(coordinator)


def _start(count: int, detach: bool, home: Path, procs: list[tuple[subprocess.Popen[bytes], Path]]) -> Client:
    local = home / "local"
    state_file = home / "coordinator" / "coordinator.json"
    log = local / "coordinator.log"
    coord = _spawn(
        [
            "-m",
            "coordinator",
            "start",
            "--home",
            str(home),
            "--listen",
            "127.0.0.1:0",
            "--join-port",
            "0",
            "--no-mdns",
        ],
        log,
        detach,
    )
    procs.append((coord, log))

    def coordinator_ready() -> bool:
        try:
            return bool(json.loads(state_file.read_text()).get("pid") == coord.pid)
        except (OSError, ValueError):
            return False

    _wait_for("starting the coordinator", coordinator_ready, procs)
    client = Client()
    for i in range(1, count + 1):
        name, state = f"node-{i}", local / f"node-{i}"
        ca = home / "admin" / "ca.pem"
        enrolled = all((state / "identity" / f).exists() for f in ("node.pem", "ca.pem"))
        if enrolled and (state / "identity" / "ca.pem").read_bytes() == ca.read_bytes():
            # Enrolled by an earlier `up`: the coordinator came back on a new port.
            (state / "identity" / "coordinator").write_text(client.address)
        else:  # never enrolled, or enrolled with a CA that is gone: join this one
            token = client.create_token(ttl_s=60)
            joined = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "node_agent",
                    "join",
                    token.join_address,
                    "--token",
                    token.token,
                    "--name",
                    name,
                    "--state-dir",
                    str(state),
                ],
                capture_output=True,
                env=daemon_env(),
                text=True,
                timeout=30,
            )
            if joined.returncode != 0:
                raise CliError(f"enrolling {name} failed: {joined.stderr.strip()}", EXIT_UNAVAILABLE)
        log = local / f"{name}.log"
        proc = _spawn(
            [
                "-m",
                "node_agent",
                "start",
                "--state-dir",
                str(state),
                "--name",
                name,
                "--listen",
                "127.0.0.1:0",
                "--network",
                NETWORKS[(i - 1) % len(NETWORKS)],
                "--slots",
                "2",
                "--no-mdns",
            ],
            log,
            detach,
        )
        procs.append((proc, log))

    def nodes_online() -> bool:
        reply = client.list_nodes()
        names = {n.info.name for n in reply.nodes if n.state == "online"}
        return all(f"node-{i}" in names for i in range(1, count + 1))

    _wait_for(f"waiting for {count} nodes", nodes_online, procs)
    return client


def up_local(count: int, detach: bool, as_json: bool) -> None:
    home = flota_home()
    local = home / "local"
    fleet_file = local / "fleet.json"
    if fleet_file.exists():
        try:
            old = json.loads(fleet_file.read_text())
        except ValueError:
            old = {}
        if any(_ours(p, home) for p in [old.get("coordinator", 0), *old.get("nodes", [])] if p):
            raise CliError("a local fleet is already running here (stop it with: flota down)")
    local.mkdir(parents=True, exist_ok=True, mode=0o700)
    running = statelock.holder(home / "coordinator")
    if running:
        raise CliError(f"a coordinator already runs on {home} (pid {running}); stop it first")
    (home / "coordinator" / "coordinator.json").unlink(missing_ok=True)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    signals = _Signals()
    serving = handed_over = False  # a detached fleet, once up, is `down`'s to stop
    try:
        client = _start(count, detach, home, procs)
        pids = [p.pid for p, _ in procs]
        fleet_file.write_text(json.dumps({"coordinator": pids[0], "nodes": pids[1:]}))
        reply = client.list_nodes()
        if as_json:
            print_json({"coordinator": client.address, "nodes": to_dict(reply)["nodes"]})
        else:
            console.print(f"local fleet up: coordinator {client.address}, {count} nodes (logs in {local})")
            console.print(nodes_table(reply))
        if detach:
            handed_over = True
            return
        serving = True
        print("press Ctrl-C to stop", file=sys.stderr)
        while all(p.poll() is None for p, _ in procs):
            time.sleep(0.5)
        raise CliError("a daemon of the local fleet exited; stopping the rest", EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        if not serving:  # interrupted while starting: exit 130, as any command
            raise
    except _Stopped as stopped:
        raise SystemExit(128 + stopped.signum) from None
    finally:
        signals.stopping = True
        if not handed_over and procs:
            pids = [p.pid for p, _ in procs]
            _stop_fleet(pids[:1], pids[1:])
            fleet_file.unlink(missing_ok=True)
        signals.restore()


def running_jobs(client: Client) -> list[pb.Job]:
    """The jobs a stop would cut off, oldest run first (runs come newest first)."""
    jobs: list[pb.Job] = []
    for run in reversed(client.list_runs(limit=1000).runs):
        if run.status in RUN_ACTIVE:
            jobs += [j for j in client.get_run(run.id).jobs if j.status in ACTIVE]
    return jobs


def _job_line(job: pb.Job) -> str:
    where = f" on {job.node_name}" if job.node_name else ""
    return f"{job.id} {job.name} ({job.status}{where})"


def _wait_for_jobs(client: Client, jobs: list[pb.Job], timeout: float) -> None:
    """Wait until none of `jobs` is active any more, with a progress line now and then."""
    waiting = {j.id for j in jobs}
    deadline = time.monotonic() + timeout
    next_line = 0.0
    while waiting:
        now = time.monotonic()
        if now >= deadline:
            print(f"waited {timeout:.0f}s; {len(waiting)} still running, stopping anyway", file=sys.stderr)
            return
        if now >= next_line:
            names = ", ".join(sorted(waiting))
            left = deadline - now
            jobs_word = "job" if len(waiting) == 1 else "jobs"
            print(
                f"waiting for {len(waiting)} running {jobs_word} ({names}); {left:.0f}s left", file=sys.stderr
            )
            next_line = now + PROGRESS_EVERY_S
        time.sleep(0.5)
        waiting &= {j.id for j in running_jobs(client)}


def down_local(as_json: bool = False, wait: bool = False, wait_timeout: float = WAIT_DEFAULT_S) -> None:
    fleet_file = flota_home() / "local" / "fleet.json"
    try:
        fleet = json.loads(fleet_file.read_text())
    except (OSError, ValueError):
        if as_json:
            print_json({"stopped": 0})
        else:
            console.print("no local fleet is running")
        return
    home = flota_home()
    nodes = [p for p in fleet.get("nodes", []) if p and _ours(p, home)]
    coordinator = [p for p in [fleet.get("coordinator", 0)] if p and _ours(p, home)]
    jobs: list[pb.Job] = []
    if coordinator:
        try:
            client = Client()
            jobs = running_jobs(client)
            if jobs and wait:
                _wait_for_jobs(client, jobs, wait_timeout)
                jobs = running_jobs(client)
        except CliError as exc:  # a coordinator that cannot answer must not keep its fleet up
            print(
                f"flota: cannot ask the coordinator which jobs run ({exc}); stopping anyway", file=sys.stderr
            )
    if not as_json:
        for job in jobs:
            console.print(f"stopping job {_job_line(job)}", markup=False, highlight=False)
        if jobs:
            console.print(
                "(they run again, as a new attempt, at the next `flota up`)", markup=False, highlight=False
            )
    _stop_fleet(coordinator, nodes)
    fleet_file.unlink(missing_ok=True)
    stopped = len(nodes) + len(coordinator)
    if as_json:
        print_json({"stopped": stopped, "jobs_stopped": [{"id": j.id, "name": j.name} for j in jobs]})
    else:
        console.print(f"stopped {stopped} daemons")


def up(
    ctx: typer.Context,
    local: Annotated[int, typer.Option("--local", help="Start a one-machine fleet of N nodes (1 to 32).")],
    detach: Annotated[
        bool, typer.Option(help="Return once the fleet is up (stop it with `flota down`).")
    ] = False,
) -> None:
    """Start a local fleet: a coordinator plus N node daemons on this machine."""
    if not 1 <= local <= 32:
        raise CliError("give the number of local nodes: flota up --local 3 (1 to 32)")
    up_local(local, detach=detach, as_json=options(ctx).json)


def down(
    ctx: typer.Context,
    wait: Annotated[
        bool, typer.Option("--wait", help="Let running jobs end first (up to --timeout seconds).")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="With --wait: how long to wait before stopping anyway.")
    ] = WAIT_DEFAULT_S,
) -> None:
    """Stop the local fleet started by `flota up --local N --detach`, naming the jobs it cuts off."""
    if timeout <= 0:
        raise CliError("--timeout must be more than 0 seconds")
    down_local(as_json=options(ctx).json, wait=wait, wait_timeout=timeout)
