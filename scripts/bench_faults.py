#!/usr/bin/env python3
"""Fault-handling benchmark on the network-namespace lab (needs root).

A coordinator on lab host "ws" and node daemons on "n1", "n2", "n3" (one bridge): real
processes, mutual TLS, join tokens and mDNS, as in tests/lab/test_multihost.py. The
coordinator runs with a short --lost-after so that trials are quick.

1. Link cut. A long `sleep` job (CLI, --retries 1, --label pool=fault: only n1 and n2
   carry it) runs on one of them; that node's link goes down (`ip link set eth0 down` in
   its host). From the cut: node `unreachable`, `lost`, job `running` on the other pool
   node. Then the run is cancelled and the link restored; from the link coming up: node
   `online` again, its stale `sleep` gone.
2. Coordinator restart: kill -9, start again on the same home and ports. From the kill:
   the API answers, all three nodes `online`.
3. Discovery: node "n3" stops (SIGTERM: it says goodbye and goes `offline`), then
   `flota node start` runs again on its host. From that command's start: `online` in
   `flota nodes` (the node dials the coordinator it enrolled with and announces itself
   over mDNS; whichever arrives first makes it visible).

State is polled every 10 ms over the admin gRPC API from inside "ws" (the main thread
joins that network namespace once the lab is up), on the monotonic clock.

    python scripts/bench_faults.py [--trials 10] [--discovery-trials 20] [--quick] [--json faults.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protos.channels import client_options  # noqa: E402
from protos.contract import COORDINATOR_SERVER_NAME  # noqa: E402
from protos.flota.v1 import coordinator_pb2 as pb  # noqa: E402
from protos.flota.v1.coordinator_pb2_grpc import CoordinatorStub  # noqa: E402
from tests.fleet import Fleet  # noqa: E402
from tests.lab.netlab import Lab, cleanup_stale  # noqa: E402

UNREACHABLE_AFTER_S = 1.0
LOST_AFTER_S = 3.0
POLL_S = 0.01
PHASE_TIMEOUT_S = 30.0
NODES = {"n1": "pool=fault", "n2": "pool=fault", "n3": "pool=spare"}
FINAL = ("success", "failed", "timeout", "cancelled", "lost")
CLONE_NEWNET = 0x40000000


def set_netns(fd: int) -> None:
    """Move the calling thread (and what it starts from now on) into the namespace `fd`."""
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def poll(check: Callable[[], object], what: str, timeout: float = PHASE_TIMEOUT_S) -> float:
    """Call `check` every POLL_S until it is truthy; return the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        now = time.monotonic()
        if value:
            return now
        if now > deadline:
            raise TimeoutError(f"{what}: not seen within {timeout:.0f}s")
        time.sleep(POLL_S)


class Api:
    """The admin API, reconnecting within ~20 ms so that a restart is seen promptly."""

    def __init__(self, home: Path, address: str) -> None:
        pems = [(home / "admin" / f).read_bytes() for f in ("ca.pem", "key.pem", "cert.pem")]
        options = dict(client_options(COORDINATOR_SERVER_NAME))
        options.update({"grpc.initial_reconnect_backoff_ms": 10, "grpc.max_reconnect_backoff_ms": 20})
        creds = grpc.ssl_channel_credentials(*pems)
        self.channel = grpc.secure_channel(address, creds, options=list(options.items()))
        self.stub = CoordinatorStub(self.channel)

    def states(self) -> dict[str, str]:
        return {n.info.name: n.state for n in self.stub.ListNodes(pb.ListNodesRequest(), timeout=2).nodes}

    def all_online(self) -> bool:
        states = self.states()
        return len(states) == len(NODES) and all(s == "online" for s in states.values())

    def job(self, job_id: str) -> pb.Job:
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=2)


def sleepers(lab: Lab, marker: str) -> list[int]:
    """Pids in the lab's hosts whose command line contains `marker` (one trial's `sleep N`)."""
    hosts = {os.stat(f"/run/netns/{h.ns}").st_ino for h in lab.hosts.values()}
    found = []
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError):
            if not entry.name.isdigit() or os.stat(f"{entry.path}/ns/net").st_ino not in hosts:
                continue
            if marker in Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(int(entry.name))
    return found


def cut_trial(
    lab: Lab, fleet: Fleet, api: Api, trial: int, out: dict[str, list[float]], notes: list[str]
) -> str:
    poll(api.all_online, "all nodes online before the trial")
    marker = f"sleep {100000 + trial}"
    run = fleet.json("run", "--label", "pool=fault", "--retries", "1", "--name", f"cut{trial}", marker)
    job_id = run["jobs"][0]["id"]
    poll(lambda: api.job(job_id).status == "running", "job running")
    victim: str = api.job(job_id).node_name
    host, states, seen, odd = lab.hosts[victim], ["online"], dict[str, float](), set[str]()
    host.link_down()
    t_cut, down = time.monotonic(), True
    try:

        def watch() -> bool:
            nodes, job = api.states(), api.job(job_id)
            now = time.monotonic() - t_cut
            state = nodes.get(victim, "?")
            if states[-1] != state:
                states.append(state)
            if state in ("unreachable", "lost"):
                seen.setdefault("cut -> unreachable", now)
            if state == "lost":
                seen.setdefault("cut -> lost", now)
            if job.status == "running" and job.node_name not in ("", victim):
                seen.setdefault("cut -> job running elsewhere", now)
            for name, other in nodes.items():
                if name != victim and other != "online" and f"{name} {other}" not in odd:
                    odd.add(f"{name} {other}")
                    notes.append(f"cut {trial}: bystander {name} was {other} at +{now:.3f}s")
            return len(seen) == 3

        poll(watch, f"{victim} unreachable/lost and its job moved")
        if "unreachable" not in states:
            notes.append(f"cut {trial}: `unreachable` not observed ({' -> '.join(states)})")
        for key, value in seen.items():
            out[key].append(value)
        attempts = [(a.node_name, a.status) for a in api.job(job_id).attempts]
        if len(attempts) != 2 or attempts[0] != (victim, "lost") or attempts[1][1] != "running":
            notes.append(f"cut {trial}: unexpected attempts {attempts}")
        fleet.flota("cancel", run["id"], check=True)
        poll(lambda: api.job(job_id).status in FINAL, "job cancelled")
        host.link_up()
        t_up, down = time.monotonic(), False
        back = poll(lambda: api.states().get(victim) == "online", f"{victim} online again") - t_up
        out["link up -> online again"].append(back)
        try:
            out["link up -> stale sleep gone"].append(poll(lambda: not sleepers(lab, marker), "", 15) - t_up)
        except TimeoutError:
            pids = sleepers(lab, marker)
            notes.append(f"cut {trial}: `{marker}` still running 15s after link up (pids {pids})")
            for pid in pids:  # started by our own node daemon; keep the next trial clean
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        times = "  ".join(f"{k.split('> ')[1]} {v:.3f}s" for k, v in seen.items())
        print(f"  cut {trial}: {victim} {times}  online again {back:.3f}s  ({' -> '.join(states)})")
    finally:
        if down:
            host.link_up()
    return victim


def restart_trial(
    fleet: Fleet, api: Api, argv: list[str], prefix: list[str], trial: int, out: dict[str, list[float]]
) -> None:
    poll(api.all_online, "all nodes online before the restart")
    old = fleet.procs["coordinator"]
    t_kill = time.monotonic()
    old.kill()
    old.wait(10)
    proc = fleet.spawn("coordinator", argv, prefix)
    seen: dict[str, float] = {}

    def watch() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"restarted coordinator exited: {fleet.log('coordinator')[-2000:]}")
        try:
            states = api.states()
        except grpc.RpcError:
            return False
        now = time.monotonic() - t_kill
        seen.setdefault("kill -9 -> API answers", now)
        if len(states) == len(NODES) and all(s == "online" for s in states.values()):
            seen["kill -9 -> all 3 nodes online"] = now
        return len(seen) == 2

    poll(watch, "all nodes online after the restart")
    for key, value in seen.items():
        out[key].append(value)
    print(f"  restart {trial}: " + "  ".join(f"{k.split('> ')[1]} {v:.3f}s" for k, v in seen.items()))


def discovery_trial(fleet: Fleet, api: Api, host: Any, trial: int, out: dict[str, list[float]]) -> None:
    poll(api.all_online, "all nodes online before the node restart")
    fleet.stop("n3")
    poll(lambda: api.states().get("n3") != "online", "n3 offline")
    argv = ["-m", "cli", "node", "start", "--state-dir", str(host.dir / "node"), "--name", "n3"]
    argv += ["--listen", "0.0.0.0:0", "--label", NODES["n3"]]
    t_start = time.monotonic()
    proc = fleet.spawn("n3", argv, host.command([]))

    def online() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"n3 exited: {fleet.log('n3')[-2000:]}")
        return api.states().get("n3") == "online"

    poll(online, "n3 online after flota node start")
    took = time.monotonic() - t_start
    out["flota node start -> online"].append(took)
    print(f"  discovery {trial}: {took:.3f}s", flush=True)


def summary(values: list[float]) -> dict[str, Any]:
    s = sorted(values)
    p10, median = s[round(0.1 * (len(s) - 1))], statistics.median(s)
    return {"n": len(s), "min": s[0], "p10": p10, "median": median, "worst": s[-1], "samples": values}


def bench(
    trials: int, discovery: int, out: dict[str, list[float]], notes: list[str], victims: list[str]
) -> None:
    """Build the lab and fleet, run the trials, and always tear everything down."""
    own_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
    api: Api | None = None
    fleet: Fleet | None = None
    lab = Lab()
    try:
        lan = lab.add_network("lan")
        ws = lab.add_host("ws", [lan])
        hosts = {name: lab.add_host(name, [lan]) for name in NODES}
        fleet = Fleet(ws.dir / "home", cli_prefix=ws.command([]))
        times = ("--unreachable-after", f"{UNREACHABLE_AFTER_S:g}", "--lost-after", f"{LOST_AFTER_S:g}")
        coord = fleet.start_coordinator(
            "--advertise", ws.address(), *times, listen="0.0.0.0:0", prefix=ws.command([]), mdns=True
        )
        for name, label in NODES.items():
            host = hosts[name]
            fleet.start_node(
                name,
                "--label",
                label,
                listen="0.0.0.0:0",
                prefix=host.command([]),
                mdns=True,
                state=host.dir / "node",
            )
        ws_ns = os.open(f"/run/netns/{ws.ns}", os.O_RDONLY)
        try:
            set_netns(ws_ns)
        finally:
            os.close(ws_ns)
        api = Api(fleet.home, coord["local"])
        print(f"lab {lab.prefix}: coordinator {coord['api']}, nodes {' '.join(NODES)}", flush=True)
        port, join_port = coord["local"].rsplit(":", 1)[1], coord["join"].rsplit(":", 1)[1]
        argv = ["-m", "coordinator", "start", "--listen", f"0.0.0.0:{port}", "--join-port", join_port]
        argv += ["--advertise", ws.address(), *times]
        for trial in range(1, trials + 1):
            victims.append(cut_trial(lab, fleet, api, trial, out, notes))
        for trial in range(1, trials + 1):
            restart_trial(fleet, api, argv, ws.command([]), trial, out)
        for trial in range(1, discovery + 1):
            discovery_trial(fleet, api, hosts["n3"], trial, out)
    finally:
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:  # a second Ctrl-C must not cut the teardown short
            with contextlib.suppress(Exception):
                if api is not None:
                    api.channel.close()
            with contextlib.suppress(OSError):
                set_netns(own_ns)
            lab.close()  # kills every process in the lab's namespaces: daemons, jobs, CLI calls
            for proc in fleet.procs.values() if fleet else ():
                with contextlib.suppress(Exception):
                    proc.wait(2)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=10, help="trials per measure (default 10)")
    parser.add_argument("--discovery-trials", type=int, default=20, help="node restarts (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 trials, 5 node restarts")
    parser.add_argument(
        "--json", "--json-out", dest="json_out", type=Path, help="also write the figures here"
    )
    opts = parser.parse_args()
    trials = 3 if opts.quick else opts.trials
    discovery = 5 if opts.quick else opts.discovery_trials
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # tear down on SIGTERM too
    config = {"lost_after_s": LOST_AFTER_S, "unreachable_after_s": UNREACHABLE_AFTER_S, "poll_s": POLL_S}
    print(f"lost-after {LOST_AFTER_S:g}s, unreachable-after {UNREACHABLE_AFTER_S:g}s, ", end="")
    print(f"poll {POLL_S * 1000:g} ms, {trials} trials", flush=True)
    t_start = time.monotonic()
    cleanup_stale()
    out: dict[str, list[float]] = defaultdict(list)  # measure -> seconds, in first-seen order
    notes: list[str] = []
    victims: list[str] = []
    failed = False
    try:
        bench(trials, discovery, out, notes, victims)
    except KeyboardInterrupt:
        print("interrupted; everything torn down", file=sys.stderr)
        return 130
    except (TimeoutError, RuntimeError, AssertionError, grpc.RpcError) as exc:
        failed = True
        notes.append(f"ABORTED: {type(exc).__name__}: {(str(exc) or '?').splitlines()[0]}")
        print(f"aborted: {exc}", file=sys.stderr)
    elapsed = time.monotonic() - t_start
    measures = {k: summary(v) for k, v in out.items() if v}
    print(f"\n{'measure (seconds)':32s} {'n':>3s} {'min':>7s} {'p10':>7s} {'median':>7s} {'worst':>7s}")
    for name, m in measures.items():
        print(f"{name:32s} {m['n']:3d} {m['min']:7.3f} {m['p10']:7.3f} {m['median']:7.3f} {m['worst']:7.3f}")
    print(f"victims: {' '.join(victims)}; total {elapsed:.1f}s")
    for note in notes:
        print(f"note: {note}")
    if opts.json_out:
        report = {"config": {**config, "trials": trials, "nodes": NODES}, "measures": measures}
        report["config"]["discovery_trials"] = discovery
        report |= {"victims": victims, "notes": notes, "elapsed_s": round(elapsed, 1)}
        opts.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(measure, value) lines for scripts/bench.py's table."""
    out = []
    for name, m in report.get("measures", {}).items():
        ms = {k: m[k] * 1000 for k in ("median", "min", "worst")}
        out.append(
            (name, f"median {ms['median']:.0f} ms (min {ms['min']:.0f}, worst {ms['worst']:.0f}; n={m['n']})")
        )
    config = report.get("config", {})
    if config:
        grace = f"{config['unreachable_after_s']:g} s / {config['lost_after_s']:g} s"
        out.append(("  coordinator's unreachable / lost after", grace))
    out += [("  note", note) for note in report.get("notes", [])]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
