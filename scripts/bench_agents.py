#!/usr/bin/env python3
"""AI-worker overheads on a local fleet, against an instant OpenAI-compatible server on
loopback, with a warm llm agent host and without one, side by side in one run: two node
daemons, "warm" (its agent host started ahead, `--warm-agents`) and "cold"
(`--agent-idle 0`: each llm job is a fresh `python -m node_agent.agents.llm` that imports
litellm), llm jobs pinned to each in turn. Over the trials, an llm job of STEPS model calls:
  - `flota run` -> the model server's first request (p50): dispatch, the agent process's
    start (forked warm, or a fresh interpreter importing litellm), its first call;
  - loop overhead per step: the time between consecutive model requests when the model
    answers at once (litellm, the tool, the history);
  - RSS: the node daemons idle and while a job runs (the agent is its own process), and
    the warm node's agent host.

    python scripts/bench_agents.py [--quick] [--json out.json]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchreport  # noqa: E402

from protos.contract import RUN_ACTIVE  # noqa: E402
from tests.fake_openai import FakeOpenAI, call  # noqa: E402
from tests.fleet import Fleet, wait_until  # noqa: E402

KINDS = {"warm": ("--warm-agents",), "cold": ("--agent-idle", "0")}
HOST = "node_agent.agents.llm.host"


def mb(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss) / 2**20


def agent_host(daemon: psutil.Process) -> psutil.Process | None:
    """The daemon's agent host once litellm is in it (tiktoken mapped), else None."""
    for child in daemon.children():
        if HOST in " ".join(child.cmdline()) and "tiktoken" in Path(f"/proc/{child.pid}/maps").read_text():
            return child
    return None


def trial(fleet: Fleet, node: str, steps: int, daemon: psutil.Process) -> tuple[float, float, float, float]:
    """One llm job on `node`: (run -> first request s, the node's start of the job -> first
    request s, per-step overhead s, daemon RSS MB while it ran)."""
    script = [call("list_files", path=".") for _ in range(steps - 1)] + [call("finish", summary="done")]
    with FakeOpenAI(script) as server:
        started, wall = time.monotonic(), time.time()
        run = fleet.json(
            "run", "--on", node, "--agent", "llm", "--model", "openai/bench", "--api-base", server.base_url,
            "--max-steps", str(steps + 1), "bench",
        )  # fmt: skip
        wait_until(lambda: server.request_times, timeout=60, period=0.002, what="first call")
        first = server.request_times[0] - started
        rss = [mb(daemon)]
        while fleet.json("status", run["id"])["status"] in RUN_ACTIVE:
            rss.append(mb(daemon))
            time.sleep(0.05)
        times = server.request_times
        job = fleet.json("status", run["id"])["jobs"][0]
        if job["status"] != "success" or job["result"]["steps"] != steps:
            raise RuntimeError(f"the bench job did not succeed: {job}")
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    on_node = wall + first - float(job["result"]["started_at"])  # the node accepted it: prepare, spawn, agent
    return first, on_node, statistics.median(gaps) if gaps else 0.0, max(rss)


def run(quick: bool) -> dict[str, Any]:
    trials, steps = (3, 5) if quick else (9, 20)
    first: dict[str, list[float]] = {k: [] for k in KINDS}
    node_first: dict[str, list[float]] = {k: [] for k in KINDS}
    step: dict[str, list[float]] = {k: [] for k in KINDS}
    busy: dict[str, list[float]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="flota-bench-agents-") as tmp:
        fleet = Fleet(Path(tmp) / "home")
        try:
            fleet.start_coordinator()
            daemons = {
                k: psutil.Process(fleet.start_node(k, "--slots", "2", *flags).pid)
                for k, flags in KINDS.items()
            }
            host = wait_until(lambda: agent_host(daemons["warm"]), timeout=120, what="the warm agent host")
            for kind in KINDS:  # uncounted: the host has surely finished warming up
                trial(fleet, kind, 2, daemons[kind])
            time.sleep(1.0)
            idle = {k: mb(d) for k, d in daemons.items()}
            host_idle = mb(host)
            for _ in range(trials):
                for kind in KINDS:  # alternating: both see the same machine
                    f, n, s, r = trial(fleet, kind, steps, daemons[kind])
                    first[kind].append(f)
                    node_first[kind].append(n)
                    step[kind].append(s)
                    busy[kind].append(r)
            still = agent_host(daemons["warm"])
            if still is None or still.pid != host.pid:
                raise RuntimeError("the warm node's agent host changed during the bench")
            host_after = mb(host)
        finally:
            fleet.close()
    p50 = {k: statistics.median(v) for k, v in first.items()}
    return {
        "trials": trials,
        "steps": steps,
        "first_call_warm_s": round(p50["warm"], 4),
        "first_call_cold_s": round(p50["cold"], 4),
        "first_call_s": {k: [round(x, 4) for x in v] for k, v in first.items()},
        # From the node's accepting the job (its result's started_at) to the first request.
        "node_first_call_s": {k: round(statistics.median(v), 4) for k, v in node_first.items()},
        "step_overhead_ms": {k: round(statistics.median(v) * 1000, 2) for k, v in step.items()},
        "daemon_rss_idle_mb": {k: round(v, 1) for k, v in idle.items()},
        "daemon_rss_busy_mb": {k: round(max(v), 1) for k, v in busy.items()},
        "agent_host_rss_mb": round(host_idle, 1),
        "agent_host_rss_after_mb": round(host_after, 1),
    }


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    r = report

    def both(figures: dict[str, float], unit: str, digits: int = 1) -> str:
        return "  ".join(f"{kind} {value:.{digits}f} {unit}" for kind, value in figures.items())

    first = f"warm {r['first_call_warm_s']:.3f} s  cold {r['first_call_cold_s']:.3f} s"
    host = f"{r['agent_host_rss_mb']:.1f} MB (after the trials {r['agent_host_rss_after_mb']:.1f} MB)"
    return [
        ("flota run -> first model request, p50", first),
        ("node accepts the job -> first request, p50", both(r["node_first_call_s"], "s", 3)),
        ("loop overhead per step", both(r["step_overhead_ms"], "ms")),
        ("node daemon RSS idle", both(r["daemon_rss_idle_mb"], "MB")),
        ("node daemon RSS, llm job running", both(r["daemon_rss_busy_mb"], "MB")),
        ("agent host RSS (litellm imported)", host),
        ("trials x model calls", f"{r['trials']} x {r['steps']} per kind"),
    ]


def main() -> int:
    return benchreport.main(__doc__, run, rows, "3 trials of 5 model calls each")


if __name__ == "__main__":
    raise SystemExit(main())
