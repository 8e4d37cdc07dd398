#!/usr/bin/env python3
"""Dispatch and memory benchmark: a real coordinator and 2 node daemons on loopback (mTLS).

Jobs with no repo run `true` on 2 nodes of 4 slots each (8 workers), measured from the
client: SubmitRun, then WatchRun until the run's final event.
  - sequential: one job at a time (latency p50/p99, jobs/s);
  - 64 in flight: 64 clients, each submitting its next job when one ends;
  - bulk: runs of up to 1,000 jobs submitted at once (jobs/s);
  - the floor: the job's own process alone (bash running `true`), started and waited
    for through a keeper, as a node does it, with no flota around it;
  - memory: node daemon RSS at idle and with 4 running jobs, and what each running
    job's own process (its shell) takes (USS), and the keeper;
  - side by side, in the same run: Ray with 8 workers on the same work
    (scripts/bench_ray.py; skipped when Ray is not installed).

    python scripts/bench_dispatch.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchreport  # noqa: E402  (the table and JSON of every bench script)
from bench_ray import latency  # noqa: E402  (the same figures for both sides)

from cli.client import Client  # noqa: E402
from node_agent.commandline import SHELL  # noqa: E402
from node_agent.process import KeeperClient as Keeper  # noqa: E402
from protos.contract import RUN_ACTIVE  # noqa: E402
from protos.flota.v1 import coordinator_pb2 as pb  # noqa: E402
from tests.fleet import Fleet, wait_until  # noqa: E402

SLOTS = 4
NODES = 2
INFLIGHT = 64
MAX_TASKS = 1000  # per run (the coordinator's limit)


def one_job(client: Client, tasks: int = 1, placement: pb.PlacementSpec | None = None) -> float:
    """Submit a run of `tasks` `true` jobs and wait for its end; milliseconds."""
    t0 = time.perf_counter()
    request = pb.SubmitRunRequest(tasks=[pb.TaskSpec(command="true")] * tasks, placement=placement)
    run = client.submit_run(request)
    for event in client.watch_run(run.id):
        if event.WhichOneof("kind") == "run":
            if event.run.status != "success":
                raise RuntimeError(f"run {run.id} ended {event.run.status}")
            break
    return (time.perf_counter() - t0) * 1000


def sequential(client: Client, count: int) -> tuple[list[float], float]:
    t0 = time.perf_counter()
    times = [one_job(client) for _ in range(count)]
    return times, count / (time.perf_counter() - t0)


def in_flight(client: Client, count: int, depth: int) -> tuple[list[float], float]:
    """`depth` clients, each submitting its next job as soon as its last one ended."""
    times: list[float] = []
    errors: list[BaseException] = []
    left = [count]
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if left[0] <= 0 or errors:
                    return
                left[0] -= 1
            try:
                took = one_job(client)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                return
            with lock:
                times.append(took)

    threads = [threading.Thread(target=worker) for _ in range(depth)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return times, count / (time.perf_counter() - t0)


def bulk(client: Client, count: int) -> float:
    sizes = [MAX_TASKS] * (count // MAX_TASKS) + ([count % MAX_TASKS] if count % MAX_TASKS else [])
    threads = [threading.Thread(target=one_job, args=(client, size)) for size in sizes]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count / (time.perf_counter() - t0)


def floor(count: int) -> list[float]:
    """The job's own process, as the node starts it (through its keeper), nothing else around."""

    async def measure() -> list[float]:
        keeper, times = Keeper(), []
        with tempfile.TemporaryDirectory(prefix="flota-floor-") as tmp:
            cwd = Path(tmp)
            true = [SHELL, "-c", "true"]  # a builtin: bash runs it, as the node would
            await keeper.spawn(true, cwd, os.environ, cwd / "output", cwd / "exit")  # start the keeper
            for _ in range(count):
                t0 = time.perf_counter()
                proc = await keeper.spawn(true, cwd, os.environ, cwd / "output", cwd / "exit")
                if await proc.wait() != 0:
                    raise RuntimeError("`true` failed")
                times.append((time.perf_counter() - t0) * 1000)
            await keeper.close()
        return times

    return asyncio.run(measure())


def memory(fleet: Fleet, client: Client, node: subprocess.Popen[bytes]) -> dict[str, float]:
    """Daemon RSS at idle and with SLOTS sleeping jobs; the jobs' own processes (USS)."""
    daemon = psutil.Process(node.pid)
    idle = daemon.memory_info().rss / 2**20
    request = pb.SubmitRunRequest(
        tasks=[pb.TaskSpec(command="sleep 60")] * SLOTS, placement=pb.PlacementSpec(node="n1")
    )
    run = client.submit_run(request)

    def all_running() -> bool:
        jobs = client.get_run(run.id).jobs
        return all(j.status == "running" for j in jobs)

    try:
        wait_until(all_running, timeout=30, what="the sleeping jobs to run")
        time.sleep(1.0)  # let the output tails and timers settle
        busy = daemon.memory_info().rss / 2**20
        everything = daemon.children(recursive=True)
        keepers = [p for p in everything if "keeper.py" in " ".join(p.cmdline())]
        procs = [p for p in everything if p not in keepers]
        own = sum(p.memory_full_info().uss for p in procs) / 2**20
        keeper_mb = sum(p.memory_full_info().uss for p in keepers) / 2**20
        keeper_rss_mb = sum(p.memory_info().rss for p in keepers) / 2**20
    finally:
        client.cancel(run.id)
        ended = lambda: client.get_run(run.id).status not in RUN_ACTIVE  # noqa: E731
        wait_until(ended, timeout=30, what="the sleeping jobs to stop")
    return {
        "idle_rss_mb": idle,
        "busy_rss_mb": busy,
        "daemon_per_job_mb": (busy - idle) / SLOTS,
        "job_processes_uss_mb": own / SLOTS,
        "job_processes": len(procs) / SLOTS,
        "keeper_uss_mb": keeper_mb,
        "keeper_rss_mb": keeper_rss_mb,
    }


def ray_side(sequential_n: int, jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flota-ray-") as tmp:
        out = Path(tmp) / "ray.json"
        argv = [sys.executable, str(ROOT / "scripts" / "bench_ray.py"), "--workers", str(SLOTS * NODES)]
        argv += ["--sequential", str(sequential_n), "--jobs", str(jobs), "--json", str(out)]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp)
        if proc.returncode == 3:
            return {"skipped": "ray is not installed (pip install ray)"}
        if proc.returncode != 0:
            return {"skipped": f"ray failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"}
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def run(quick: bool) -> dict[str, Any]:
    n_seq, n_jobs = (100, 500) if quick else (500, 2000)
    report: dict[str, Any] = {"workers": SLOTS * NODES, "nodes": NODES}
    with tempfile.TemporaryDirectory(prefix="flota-bench-") as tmp:
        fleet = Fleet(Path(tmp) / "home")
        saved = os.environ.get("FLOTA_HOME")
        try:
            fleet.start_coordinator()
            nodes = [fleet.start_node(f"n{i}", "--slots", str(SLOTS)) for i in range(1, NODES + 1)]
            os.environ["FLOTA_HOME"] = str(fleet.home)
            client = Client()
            sequential(client, 30)  # warm up: channels, sqlite pages, imports
            time.sleep(2)
            report["memory"] = memory(fleet, client, nodes[0])
            coordinator = psutil.Process(fleet.procs["coordinator"].pid)
            report["coordinator_idle_rss_mb"] = coordinator.memory_info().rss / 2**20
            time.sleep(1)
            seq, seq_rate = sequential(client, n_seq)
            report["sequential"] = {"n": n_seq, "latency_ms": latency(seq), "per_s": seq_rate}
            flight, flight_rate = in_flight(client, n_jobs, INFLIGHT)
            report["inflight"] = {
                "n": n_jobs,
                "depth": INFLIGHT,
                "latency_ms": latency(flight),
                "per_s": flight_rate,
            }
            report["bulk"] = {"n": n_jobs, "per_s": bulk(client, n_jobs)}
            report["coordinator_rss_mb"] = coordinator.memory_info().rss / 2**20
            client.close()
        finally:
            fleet.close()
            if saved is None:
                os.environ.pop("FLOTA_HOME", None)
            else:
                os.environ["FLOTA_HOME"] = saved
    report["floor_ms"] = latency(floor(100 if quick else 300))
    report["ray"] = ray_side(n_seq, n_jobs)
    return report


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    ray = report.get("ray", {})
    labels = (("true", "true"), ("chain", "bash -c true (flota's job)"))
    works = [(w, label) for w, label in labels if w in ray]

    def seq(r: dict[str, Any]) -> str:
        lat = r["sequential"]["latency_ms"]
        return f"p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  ({r['sequential']['per_s']:.0f}/s)"

    def flight(r: dict[str, Any]) -> str:
        lat = r["inflight"]["latency_ms"]
        return f"{r['inflight']['per_s']:.0f}/s  (p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms)"

    def bulk(r: dict[str, Any]) -> str:
        return f"{r['bulk']['per_s']:.0f}/s"

    out: list[tuple[str, str]] = []
    measures = (
        ("sequential: submit -> result", seq, lambda r: r["sequential"]["latency_ms"]["p50"], "time"),
        (f"{INFLIGHT} in flight", flight, lambda r: r["inflight"]["per_s"], "rate"),
        (f"bulk ({report['bulk']['n']} at once)", bulk, lambda r: r["bulk"]["per_s"], "rate"),
    )
    for name, show, key, kind in measures:
        out.append((name, show(report)))
        for work, label in works:
            theirs = ray[work]
            ratio = key(report) / key(theirs)
            better = "lower is better" if kind == "time" else "higher is better"
            out.append((f"  Ray, task runs {label}", f"{show(theirs)}   flota/Ray {ratio:.2f} ({better})"))
    if not works:
        out.append(("  Ray", ray.get("skipped", "not run")))
    fp = report["floor_ms"]
    floor_text = f"p50 {fp['p50']:.2f} ms  p99 {fp['p99']:.2f} ms"
    out.append(("floor: the job's process alone (via a keeper)", floor_text))
    m = report["memory"]
    out.append(("node daemon RSS, idle", f"{m['idle_rss_mb']:.1f} MB"))
    per_job = f"daemon +{m['daemon_per_job_mb']:.2f} MB; "
    per_job += f"the job's own process {m['job_processes_uss_mb']:.2f} MB USS"
    out.append((f"per running job ({SLOTS} x sleep)", per_job))
    out.append(("the node's keeper", f"{m['keeper_uss_mb']:.1f} MB USS, {m['keeper_rss_mb']:.1f} MB RSS"))
    coord = f"{report['coordinator_idle_rss_mb']:.1f} MB idle, "
    coord += f"{report['coordinator_rss_mb']:.1f} MB after the runs"
    out.append(("coordinator RSS", coord))
    return out


def main() -> int:
    return benchreport.main(__doc__, run, rows, "100 sequential, 500 in flight and bulk")


if __name__ == "__main__":
    raise SystemExit(main())
