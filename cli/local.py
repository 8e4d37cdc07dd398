"""`flota up --local N` / `flota down`: a whole fleet on one machine.

A coordinator and N node daemons, each its own process with its own state directory
(`$FLOTA_HOME/local/node-<i>`), port, name and network profile. Nodes are enrolled
through the real join flow the first time; mDNS is off (nothing to discover on
loopback, and nothing to announce to the LAN).
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
from typing import Annotated

import psutil
import typer

from cli.client import EXIT_UNAVAILABLE, Client, CliError, flota_home
from cli.daemon import daemon_env
from cli.options import options
from cli.render import console, nodes_table, print_json, to_dict
from protos import statelock

__all__ = ["down", "down_local", "up", "up_local"]

NETWORKS = ("home", "vpn", "office")
START_TIMEOUT_S = 30.0


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
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *argv],
            env=daemon_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
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


def _stop(pids: list[int], timeout: float = 15.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        for pid in pids:  # reap our own children so they do not linger as zombies
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


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
    state_file = home / "coordinator" / "coordinator.json"
    running = statelock.holder(home / "coordinator")
    if running:
        raise CliError(f"a coordinator already runs on {home} (pid {running}); stop it first")
    state_file.unlink(missing_ok=True)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
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
    except BaseException:
        _stop([p.pid for p, _ in procs])
        raise
    fleet_file.write_text(json.dumps({"coordinator": coord.pid, "nodes": [p.pid for p, _ in procs[1:]]}))
    reply = client.list_nodes()
    if as_json:
        print_json({"coordinator": client.address, "nodes": to_dict(reply)["nodes"]})
    else:
        console.print(f"local fleet up: coordinator {client.address}, {count} nodes (logs in {local})")
        console.print(nodes_table(reply))
    if detach:
        return
    print("press Ctrl-C to stop", file=sys.stderr)
    try:
        while all(p.poll() is None for p, _ in procs):
            time.sleep(0.5)
        raise CliError("a daemon of the local fleet exited; stopping the rest", EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        pass
    finally:
        _stop([p.pid for p, _ in procs])
        fleet_file.unlink(missing_ok=True)


def down_local(as_json: bool = False) -> None:
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
    _stop(nodes)  # nodes first, so they say goodbye before the coordinator goes
    _stop(coordinator)
    fleet_file.unlink(missing_ok=True)
    if as_json:
        print_json({"stopped": len(nodes) + len(coordinator)})
    else:
        console.print(f"stopped {len(nodes) + len(coordinator)} daemons")


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


def down(ctx: typer.Context) -> None:
    """Stop the local fleet started by `flota up --local N --detach`."""
    down_local(as_json=options(ctx).json)
