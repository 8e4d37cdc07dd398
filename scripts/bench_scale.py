#!/usr/bin/env python3
"""Coordinator scale benchmark: one real coordinator, hundreds of real node daemons.

Every node is really enrolled (token -> CSR -> certificate over the join port, in
parallel), listens on its own 127.0.0.1 port with its own certificate and id, and
registers with the coordinator, which dials it and holds an mTLS session with it. No
mDNS anywhere (coordinator and nodes run with it off). The daemons run several per
process (scripts/scale_nodes.py: one asyncio loop, one NodeDaemon per state dir).

Measures:
  - enrollment time, and time from starting the node processes to all nodes online;
  - coordinator RSS and CPU at idle with every node connected, CPU ms per node per
    second, heartbeat messages and read/write bytes per node per second;
  - dispatching N jobs (no repo, command `true`, runs of 100 tasks): time to finish,
    jobs/s, coordinator peak RSS and CPU;
  - the node processes' CPU and RSS alongside (they share this machine's cores).

    python scripts/bench_scale.py [--quick] [--json out.json] [--profile DIR]

--profile records the coordinator with py-spy (idle window and dispatch) and adds the
hottest frames to the report. No traffic leaves loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchreport import emit  # noqa: E402  (the table and JSON of every bench script)

from cli.client import Client  # noqa: E402
from node_agent.enroll import join  # noqa: E402
from node_agent.errors import EnrollError  # noqa: E402
from protos.contract import RUN_ACTIVE  # noqa: E402
from protos.flota.v1 import coordinator_pb2 as pb  # noqa: E402
from tests.fleet import Fleet, wait_until  # noqa: E402

__all__ = ["main", "rows", "run"]

TARGET_RSS_MB = 300.0
RUN_SIZE = 100  # tasks per SubmitRun
JOIN_PARALLEL = 4  # the join port admits 4 calls in flight per address (CallGate)


# --- process measurements ----------------------------------------------------------------


def _cpu_s(proc: psutil.Process, children: bool = False) -> float:
    t = proc.cpu_times()
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)


def _with_keepers(nodes: list[psutil.Process]) -> list[psutil.Process]:
    """The node processes and their nodes' keepers (the parents of the job processes)."""
    found = list(nodes)
    for proc in nodes:
        with contextlib.suppress(psutil.Error):
            found += proc.children()
    return found


class Sampler(threading.Thread):
    """Samples the coordinator and the node processes every `period` seconds: peak RSS,
    and CPU over 1 s windows (peak) besides the whole span (mean)."""

    def __init__(self, coord: psutil.Process, nodes: list[psutil.Process], period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.coord, self.nodes, self.period = coord, nodes, period
        self._halt = threading.Event()
        self.peak_rss_mb = 0.0
        self.peak_cpu_pct = 0.0
        self.nodes_peak_rss_mb = 0.0
        self.t0 = time.monotonic()
        self.cpu0 = _cpu_s(coord)
        self.nodes_cpu0 = sum(_cpu_s(p, True) for p in _with_keepers(nodes))
        self.sys0 = psutil.cpu_times()
        self.t1 = self.t0
        self.cpu1 = self.cpu0
        self.nodes_cpu1 = self.nodes_cpu0
        self.sys1 = self.sys0

    def run(self) -> None:
        window: list[tuple[float, float]] = [(self.t0, self.cpu0)]
        while not self._halt.is_set():
            self.sample(window)
            self._halt.wait(self.period)
        self.sample(window)

    def sample(self, window: list[tuple[float, float]]) -> None:
        try:
            now, cpu = time.monotonic(), _cpu_s(self.coord)
            self.peak_rss_mb = max(self.peak_rss_mb, self.coord.memory_info().rss / 2**20)
            procs = _with_keepers(self.nodes)
            rss = sum(p.memory_info().rss for p in procs) / 2**20
            self.nodes_peak_rss_mb = max(self.nodes_peak_rss_mb, rss)
            nodes_cpu = sum(_cpu_s(p, True) for p in procs)
        except psutil.Error:
            return
        window.append((now, cpu))
        while len(window) > 2 and now - window[1][0] >= 1.0:
            window.pop(0)
        if now - window[0][0] >= 0.9:
            self.peak_cpu_pct = max(self.peak_cpu_pct, 100 * (cpu - window[0][1]) / (now - window[0][0]))
        self.t1, self.cpu1, self.nodes_cpu1, self.sys1 = now, cpu, nodes_cpu, psutil.cpu_times()

    def finish(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        span = max(self.t1 - self.t0, 1e-9)
        mean = 100 * (self.cpu1 - self.cpu0) / span
        busy0 = sum(self.sys0) - self.sys0.idle - getattr(self.sys0, "iowait", 0.0)
        busy1 = sum(self.sys1) - self.sys1.idle - getattr(self.sys1, "iowait", 0.0)
        total0, total1 = sum(self.sys0), sum(self.sys1)
        return {
            "seconds": span,
            "coordinator_cpu_pct": mean,
            "coordinator_peak_cpu_pct_1s": max(self.peak_cpu_pct, mean),  # a span under 1 s: its mean
            "coordinator_peak_rss_mb": self.peak_rss_mb,
            "nodes_cpu_pct": 100 * (self.nodes_cpu1 - self.nodes_cpu0) / span,
            "nodes_peak_rss_mb": self.nodes_peak_rss_mb,
            "machine_busy_pct": 100 * (busy1 - busy0) / max(total1 - total0, 1e-9),
        }


# --- py-spy ------------------------------------------------------------------------------


class Profiler:
    """`py-spy record --format raw` on the coordinator until stopped; then the hottest
    frames (self time: the leaf; total: anywhere on the stack)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.result: dict[str, Any] | None = None
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "100",
                "--nonblocking",
                "--format",
                "raw",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def stop(self, top: int = 15) -> dict[str, Any]:
        if self.result is None:
            self.result = self._stop(top)
        return self.result

    def _stop(self, top: int) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            _, err = self.proc.communicate()
        if not self.out.exists():
            return {"error": (err or b"").decode(errors="replace")[-500:]}
        selfs: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        samples = 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            if not frames:
                continue
            samples += n
            selfs[frames[-1]] += n
            for frame in set(frames):
                totals[frame] += n
        return {
            "file": str(self.out),
            "samples": samples,
            "self": [(f, n) for f, n in selfs.most_common(top)],
            "total": [(f, n) for f, n in totals.most_common(top)],
        }


# --- the fleet ---------------------------------------------------------------------------


def _enroll(client: Client, home: Path, names: list[str]) -> list[Path]:
    """One token each, then the real join (fresh key, CSR, certificate), JOIN_PARALLEL at
    a time."""
    tokens = [client.create_token() for _ in names]

    def one(item: tuple[str, Any]) -> Path:
        name, reply = item
        state = home / "nodes" / name
        state.mkdir(parents=True, mode=0o700)
        for attempt in range(50):
            try:
                join(state, reply.join_address, reply.token, name)
                return state
            except EnrollError as exc:
                if "too many calls" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.02)
        raise AssertionError("unreachable")

    with ThreadPoolExecutor(JOIN_PARALLEL) as pool:
        return list(pool.map(one, zip(names, tokens, strict=True)))


def _online(client: Client) -> tuple[int, int]:
    reply = client.list_nodes()
    return sum(n.state == "online" for n in reply.nodes), len(reply.nodes)


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers too (job processes of the group)
    except ProcessLookupError:
        pass
    proc.wait(5)


def _flaps(log_text: str) -> dict[str, int]:
    """Nodes that fell from online (before the bench stops them): late heartbeats."""
    found = Counter(m.group(1) for m in re.finditer(r": online -> (\w+)$", log_text, re.M))
    return dict(found)


def _socket_bytes(pid: int) -> tuple[int, int, int]:
    """(sockets, bytes sent, bytes received) over the established TCP sockets of `pid`,
    from the kernel's tcp_info (`ss -tinp`): TLS, HTTP/2 framing and pings included.
    gRPC uses sendmsg/recvmsg, which /proc/PID/io does not count."""
    out = subprocess.run(
        ["ss", "-tinpH", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    sockets = sent = received = 0
    mine = False
    for line in out.splitlines():
        if line and not line[0].isspace():
            mine = f"pid={pid}," in line
            if mine:
                sockets += 1
            continue
        if mine:
            m = re.search(r"\bbytes_sent:(\d+)", line)
            sent += int(m.group(1)) if m else 0
            m = re.search(r"\bbytes_received:(\d+)", line)
            received += int(m.group(1)) if m else 0
    return sockets, sent, received


def _machine_busy(seconds: float) -> float:
    """Percent of all cores busy over `seconds` (other work on a shared machine)."""
    a = psutil.cpu_times()
    time.sleep(seconds)
    b = psutil.cpu_times()
    idle = (b.idle - a.idle) + (getattr(b, "iowait", 0.0) - getattr(a, "iowait", 0.0))
    return 100 * (1 - idle / max(sum(b) - sum(a), 1e-9))


def run(
    quick: bool,
    *,
    nodes: int | None = None,
    jobs: int | None = None,
    procs: int = 4,
    slots: int = 1,
    idle_s: float | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    n_nodes = nodes or 200
    n_jobs = jobs or (1000 if quick else 5000)
    idle_window = idle_s or (5.0 if quick else 10.0)
    t_bench = time.monotonic()
    report: dict[str, Any] = {
        "quick": quick,
        "nodes": n_nodes,
        "node_processes": procs,
        "slots_per_node": slots,
        "jobs": n_jobs,
        "run_size": RUN_SIZE,
        "machine": {"cpus": os.cpu_count(), "memory_mb": psutil.virtual_memory().total // 2**20},
    }
    tmp = Path(tempfile.mkdtemp(prefix="flota-scale-"))
    fleet = Fleet(tmp / "home")
    workers: list[subprocess.Popen[bytes]] = []
    old_home = os.environ.get("FLOTA_HOME")
    profilers: list[Profiler] = []  # stopped in `finally` too
    try:
        report["machine_busy_before_pct"] = _machine_busy(2.0)
        t0 = time.monotonic()
        fleet.start_coordinator()
        report["coordinator_start_s"] = time.monotonic() - t0
        os.environ["FLOTA_HOME"] = str(fleet.home)
        client = Client()
        coord = psutil.Process(fleet.procs["coordinator"].pid)
        report["coordinator_rss_empty_mb"] = coord.memory_info().rss / 2**20

        # Enrollment: real joins, in parallel.
        names = [f"s{i:03d}" for i in range(n_nodes)]
        t0 = time.monotonic()
        states = _enroll(client, fleet.home, names)
        report["enroll_s"] = time.monotonic() - t0

        # Start the node processes; wait until the coordinator sees every node online.
        per = -(-n_nodes // procs)
        groups = [states[i : i + per] for i in range(0, n_nodes, per)]
        t0 = time.monotonic()
        for k, group in enumerate(groups):
            log = fleet.home / f"nodes-{k}.log"
            with open(log, "ab") as out:
                workers.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(ROOT / "scripts" / "scale_nodes.py"),
                            "--stats",
                            str(fleet.home / f"nodes-{k}.json"),
                            "--slots",
                            str(slots),
                            *map(str, group),
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=fleet.env,
                        cwd=fleet.home,
                        start_new_session=True,
                    )
                )
        first_online = None

        def all_online() -> bool:
            nonlocal first_online
            for k, w in enumerate(workers):
                if w.poll() is not None:
                    raise AssertionError(
                        f"node process {k} exited {w.returncode}: "
                        + (fleet.home / f"nodes-{k}.log").read_text(errors="replace")[-2000:]
                    )
            online, _ = _online(client)
            if online and first_online is None:
                first_online = time.monotonic() - t0
            return online == n_nodes

        wait_until(all_online, timeout=120 + n_nodes, what=f"{n_nodes} nodes online", period=0.2)
        report["start_to_all_online_s"] = time.monotonic() - t0
        report["start_to_first_online_s"] = first_online
        node_procs = [psutil.Process(w.pid) for w in workers]

        # Idle: every node connected, nothing to do.
        time.sleep(3.0)  # let the links settle (first reconcile of each node, registration)
        t0 = time.perf_counter()
        lat = []
        for _ in range(5):
            t = time.perf_counter()
            online, total = _online(client)
            lat.append((time.perf_counter() - t) * 1000)
        report["list_nodes_ms_p50"] = statistics.median(lat)
        stats0 = [json.loads((fleet.home / f"nodes-{k}.json").read_text()) for k in range(len(workers))]
        io0 = _socket_bytes(coord.pid)
        if profile:
            profile.mkdir(parents=True, exist_ok=True)
            profilers[:] = [
                Profiler(coord.pid, profile / "idle.txt"),
                Profiler(workers[0].pid, profile / "node-idle.txt"),
            ]
        sampler = Sampler(coord, node_procs)
        sampler.start()
        time.sleep(idle_window)
        idle = sampler.finish()
        io1 = _socket_bytes(coord.pid)
        stats1 = [json.loads((fleet.home / f"nodes-{k}.json").read_text()) for k in range(len(workers))]
        if profilers:
            report.setdefault("profile", {})["idle"] = profilers[0].stop()
            report["profile"]["node process 0, idle"] = profilers[1].stop()
        span = idle["seconds"]
        infos = sum(s["infos"] for s in stats1) - sum(s["infos"] for s in stats0)
        info_span = statistics.mean(b["time"] - a["time"] for a, b in zip(stats0, stats1, strict=True))
        online, _ = _online(client)
        report["idle"] = {
            **idle,
            "online_after": online,
            "coordinator_rss_mb": coord.memory_info().rss / 2**20,
            "coordinator_cpu_ms_per_node_s": 10 * idle["coordinator_cpu_pct"] / n_nodes,
            "heartbeats_per_node_s": infos / max(info_span, 1e-9) / n_nodes,
            "coordinator_sockets": io1[0],
            "coordinator_recv_bytes_per_node_s": (io1[2] - io0[2]) / span / n_nodes,
            "coordinator_sent_bytes_per_node_s": (io1[1] - io0[1]) / span / n_nodes,
            "coordinator_threads": coord.num_threads(),
            "coordinator_fds": coord.num_fds(),
        }

        # Warm-up: a first job on every node, which starts that node's keeper (a Python
        # process: about 25 ms of CPU each, 200 of them at once on this machine).
        t0 = time.monotonic()
        first = client.submit_run(
            pb.SubmitRunRequest(
                tasks=[pb.TaskSpec(command="true")] * n_nodes, placement=pb.PlacementSpec(spread=True)
            ),
        )
        while client.get_run(first.id).status == "running":
            if time.monotonic() - t0 > 120:
                raise RuntimeError("the warm-up run did not finish in 120 s")
            time.sleep(0.1)
        report["first_jobs"] = {
            "seconds": time.monotonic() - t0,
            "status": client.get_run(first.id).status,
            "flaps": _flaps(fleet.log("coordinator")),
        }
        log_before = len(fleet.log("coordinator"))

        # Dispatch: runs of RUN_SIZE tasks running `true`, submitted back to back.
        n_runs = -(-n_jobs // RUN_SIZE)
        sizes = [RUN_SIZE] * (n_jobs // RUN_SIZE) + ([n_jobs % RUN_SIZE] if n_jobs % RUN_SIZE else [])
        if profile:
            profilers.append(Profiler(coord.pid, profile / "dispatch.txt"))
        sampler = Sampler(coord, node_procs)
        sampler.start()
        t0 = time.monotonic()
        run_ids = []
        for size in sizes:
            reply = client.submit_run(pb.SubmitRunRequest(tasks=[pb.TaskSpec(command="true")] * size))
            run_ids.append(reply.id)
        submitted_s = time.monotonic() - t0
        pending = set(run_ids)
        deadline = t0 + max(300.0, n_jobs * 0.2)
        while pending and time.monotonic() < deadline:
            listed = client.list_runs(n_runs + 10)
            pending -= {r.id for r in listed.runs if r.id in pending and r.status not in RUN_ACTIVE}
            if pending:
                time.sleep(0.1)
        elapsed = time.monotonic() - t0
        busy = sampler.finish()
        if profile:
            report.setdefault("profile", {})["dispatch"] = profilers[-1].stop()
        statuses: Counter[str] = Counter()
        per_node: Counter[str] = Counter()
        for run_id in run_ids:
            for job in client.get_run(run_id).jobs:
                statuses[job.status] += 1
                if job.node_id:
                    per_node[job.node_id] += 1
        online, _ = _online(client)
        report["dispatch"] = {
            **busy,
            "runs": n_runs,
            "submit_s": submitted_s,
            "finish_s": elapsed,
            "timed_out": bool(pending),
            "jobs_per_s": n_jobs / elapsed,
            "job_statuses": dict(statuses),
            "nodes_used": len(per_node),
            "jobs_per_node_max": max(per_node.values(), default=0),
            "online_after": online,
            "coordinator_rss_after_mb": coord.memory_info().rss / 2**20,
            # CPU the jobs cost beyond the idle heartbeat load, per job.
            "coordinator_cpu_ms_per_job": 10
            * (busy["coordinator_cpu_pct"] - idle["coordinator_cpu_pct"])
            * busy["seconds"]
            / n_jobs,
            "nodes_cpu_ms_per_job": 10
            * (busy["nodes_cpu_pct"] - idle["nodes_cpu_pct"])
            * busy["seconds"]
            / n_jobs,
        }
        report["flaps"] = _flaps(fleet.log("coordinator")[log_before:])
    finally:
        for profiler in profilers:
            profiler.stop()
        t0 = time.monotonic()
        for w in workers:  # all at once: each says goodbye, then stops
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
        for w in workers:
            _stop_group(w)
        report["nodes_stop_s"] = time.monotonic() - t0
        fleet.close()
        coordinator = fleet.procs.get("coordinator")
        if coordinator is not None and coordinator.poll() is None:
            coordinator.kill()
        if old_home is None:
            os.environ.pop("FLOTA_HOME", None)
        else:
            os.environ["FLOTA_HOME"] = old_home
        if profile:  # keep the coordinator's log next to the profiles
            try:
                shutil.copy(fleet.home / "coordinator.log", profile / "coordinator.log")
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    report["bench_s"] = time.monotonic() - t_bench
    report["target_rss_ok"] = (
        max(report["idle"]["coordinator_rss_mb"], report["dispatch"]["coordinator_peak_rss_mb"])
        <= TARGET_RSS_MB
    )
    return report


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    n = report["nodes"]
    idle, d = report["idle"], report["dispatch"]
    peak = max(idle["coordinator_rss_mb"], d["coordinator_peak_rss_mb"])
    out = [
        (
            "setup",
            f"{n} nodes in {report['node_processes']} processes, {report['slots_per_node']} slot each, "
            f"{report['machine']['cpus']} cores",
        ),
        (
            "enroll (real joins, x4)",
            f"{report['enroll_s']:.1f} s ({1000 * report['enroll_s'] / n:.0f} ms/node)",
        ),
        (
            "start -> all online",
            f"{report['start_to_all_online_s']:.1f} s "
            f"(first after {report['start_to_first_online_s'] or 0:.1f} s)",
        ),
        ("coordinator RSS empty", f"{report['coordinator_rss_empty_mb']:.0f} MB"),
        ("coordinator RSS idle", f"{idle['coordinator_rss_mb']:.0f} MB ({n} online: {idle['online_after']})"),
        (
            "coordinator CPU idle",
            f"{idle['coordinator_cpu_pct']:.1f} % of a core "
            f"(peak 1 s {idle['coordinator_peak_cpu_pct_1s']:.0f} %)",
        ),
        ("  per node", f"{idle['coordinator_cpu_ms_per_node_s']:.2f} ms CPU per node per s"),
        ("  heartbeats", f"{idle['heartbeats_per_node_s']:.2f} per node per s"),
        (
            "  coordinator TCP bytes",
            f"in {idle['coordinator_recv_bytes_per_node_s']:.0f} B, "
            f"out {idle['coordinator_sent_bytes_per_node_s']:.0f} B per node per s "
            f"({idle['coordinator_sockets']} sockets)",
        ),
        (
            "node processes idle",
            f"{idle['nodes_cpu_pct']:.0f} % CPU, {idle['nodes_peak_rss_mb']:.0f} MB RSS "
            f"(all {report['node_processes']})",
        ),
        (
            "machine busy idle",
            f"{idle['machine_busy_pct']:.0f} % of all cores "
            f"(before the bench: {report['machine_busy_before_pct']:.0f} %)",
        ),
        ("ListNodes", f"{report['list_nodes_ms_p50']:.1f} ms p50"),
        (
            "first job on every node",
            f"{report['first_jobs']['seconds']:.1f} s ({report['first_jobs']['status']}; each starts "
            "its node's keeper); flaps "
            + (", ".join(f"online->{k} {v}" for k, v in report["first_jobs"]["flaps"].items()) or "none"),
        ),
        (
            "dispatch",
            f"{report['jobs']} jobs in {d['runs']} runs: {d['finish_s']:.1f} s, "
            f"{d['jobs_per_s']:.0f} jobs/s" + (" (TIMED OUT)" if d["timed_out"] else ""),
        ),
        (
            "  statuses",
            ", ".join(f"{k} {v}" for k, v in sorted(d["job_statuses"].items()))
            + f"; {d['nodes_used']} nodes used, max {d['jobs_per_node_max']} per node",
        ),
        ("  submit all runs", f"{d['submit_s']:.1f} s"),
        (
            "  coordinator CPU",
            f"{d['coordinator_cpu_pct']:.0f} % mean, {d['coordinator_peak_cpu_pct_1s']:.0f} % peak 1 s",
        ),
        (
            "  CPU per job",
            f"coordinator {d['coordinator_cpu_ms_per_job']:.2f} ms, node processes (with the job "
            f"process) {d['nodes_cpu_ms_per_job']:.1f} ms, beyond idle",
        ),
        (
            "  coordinator RSS",
            f"{d['coordinator_peak_rss_mb']:.0f} MB peak, {d['coordinator_rss_after_mb']:.0f} MB after",
        ),
        (
            "  node processes",
            f"{d['nodes_cpu_pct']:.0f} % CPU (with keepers, jobs), {d['nodes_peak_rss_mb']:.0f} MB RSS peak",
        ),
        ("  machine busy", f"{d['machine_busy_pct']:.0f} %"),
        ("  online after", f"{d['online_after']} / {n}"),
        (
            "node state flaps",
            ", ".join(f"online->{k} {v}" for k, v in report.get("flaps", {}).items()) or "none",
        ),
        (
            f"target RSS <= {TARGET_RSS_MB:.0f} MB",
            f"{'met' if report['target_rss_ok'] else 'MISSED'} (peak {peak:.0f} MB)",
        ),
        ("bench wall time", f"{report['bench_s']:.0f} s (node stop {report['nodes_stop_s']:.1f} s)"),
    ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1,000 jobs and a 5 s idle window")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--nodes", type=int, help="default 200")
    parser.add_argument("--jobs", type=int, help="default 5000 (1000 with --quick)")
    parser.add_argument("--procs", type=int, default=4, help="node processes (default 4)")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--idle-s", type=float, help="idle window (default 10 s, 5 s with --quick)")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the coordinator (and one node process at idle); raw stacks go here",
    )
    opts = parser.parse_args()
    report = run(
        opts.quick,
        nodes=opts.nodes,
        jobs=opts.jobs,
        procs=opts.procs,
        slots=opts.slots,
        idle_s=opts.idle_s,
        profile=opts.profile,
    )
    emit(rows(report), report, opts.json)
    for phase, prof in report.get("profile", {}).items():
        print(f"\npy-spy, coordinator, {phase} ({prof.get('samples', 0)} samples): self")
        for frame, count in prof.get("self", [])[:10]:
            print(f"  {count:6d}  {frame}")
        print("  total:")
        for frame, count in prof.get("total", [])[:10]:
            print(f"  {count:6d}  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
