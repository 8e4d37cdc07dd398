#!/usr/bin/env python3
"""flota's benchmarks in one command: prints one table and writes the figures as JSON.

Sections (each is a script of its own in scripts/, run here one after another, in a
process of its own, so that none disturbs the next):

  dispatch   bench_dispatch.py   submit -> result, 64 in flight, bulk; Ray side by side
                                 (bench_ray.py, when Ray is installed); the job's own
                                 processes alone; node daemon memory idle and per job
  placement  bench_scheduler.py  the pure scheduler: 10,000 jobs x 1,000 nodes
  scale      bench_scale.py      200 real node servers on one coordinator: RSS, CPU,
                                 5,000 jobs, heartbeat cost
  lab        bench_faults.py     network-namespace lab (root): node start -> visible
                                 (mDNS), cut link -> unreachable / lost, coordinator restart
  workspace  bench_workspace.py  worktree ready for 3,000 and 30,000 files, cold and warm
  agents     bench_agents.py     llm jobs on a warm agent host and without one: flota run ->
                                 first model request (first_call_warm_s), per-step overhead,
                                 the daemons' and the agent host's RSS
  batch      bench_batch.py      `flota run --inputs` of 10,000 lines: all queued
                                 (submit_10k_s), the one SubmitRun call, coordinator RSS,
                                 `flota results --format jsonl` of the 10,000 rows

    python scripts/bench.py [--quick] [--only dispatch,placement,...] [--json bench.json]

Ray is a benchmark-only extra: `pip install ray` (or `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SECTIONS = {
    "dispatch": ("bench_dispatch", "Dispatch, Ray side by side, memory"),
    "placement": ("bench_scheduler", "Placement (pure scheduler)"),
    "scale": ("bench_scale", "Coordinator with 200 node servers"),
    "lab": ("bench_faults", "Discovery and failure detection (netns lab, mDNS)"),
    "workspace": ("bench_workspace", "Workspace (git worktree ready)"),
    "agents": ("bench_agents", "llm agents, warm host and cold, side by side"),
    "batch": ("bench_batch", "Batch (10,000 inputs in one run)"),
}


def machine() -> dict[str, Any]:
    freq = psutil.cpu_freq()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": psutil.cpu_count(),
        "mhz": round(freq.current) if freq else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }


def run_section(name: str, quick: bool, tmp: Path) -> dict[str, Any]:
    module, _ = SECTIONS[name]
    out = tmp / f"{name}.json"
    argv = [sys.executable, str(HERE / f"{module}.py"), "--json", str(out)]
    if quick:
        argv.append("--quick")
    if name == "lab" and os.geteuid() != 0:
        return {"skipped": "the lab needs root (network namespaces)"}
    t0 = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    took = time.monotonic() - t0
    if proc.returncode != 0 or not out.exists():
        tail = proc.stdout.strip().splitlines()[-5:]
        return {"failed": f"exit {proc.returncode}", "output": tail, "seconds": took}
    report: dict[str, Any] = json.loads(out.read_text())
    report["seconds"] = round(took, 1)
    return report


def table(name: str, report: dict[str, Any]) -> list[tuple[str, str]]:
    if "skipped" in report:
        return [("skipped", report["skipped"])]
    if "failed" in report:
        return [("FAILED", report["failed"]), *(("", line) for line in report["output"])]
    module = importlib.import_module(SECTIONS[name][0])
    rows: list[tuple[str, str]] = module.rows(report)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer jobs and trials in every section")
    parser.add_argument("--only", default="", help="comma-separated sections: " + ", ".join(SECTIONS))
    parser.add_argument("--json", type=Path, default=Path("bench.json"), help="where the figures go")
    opts = parser.parse_args()
    names = [n.strip() for n in opts.only.split(",") if n.strip()] or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"error: unknown section {unknown[0]!r} (choose from {', '.join(SECTIONS)})", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"machine": machine(), "quick": opts.quick, "sections": {}}
    started = time.monotonic()
    failed = False
    with tempfile.TemporaryDirectory(prefix="flota-bench-") as tmp:
        for name in names:
            print(f"== {SECTIONS[name][1]} ...", flush=True)
            section = run_section(name, opts.quick, Path(tmp))
            report["sections"][name] = section
            failed = failed or "failed" in section
            for measure, value in table(name, section):
                print(f"   {measure:44s} {value}", flush=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']}, Python {m['python']}")
    print(f"load before: {m['load_before']}; took {report['seconds']:.0f} s; figures in {opts.json}")
    opts.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
