"""AI-worker overheads on a local fleet, against an instant OpenAI-compatible server on loopback.

Measures, over --trials runs of an llm job that makes --steps model calls:
- submit -> first model call: from `flota run` (the SubmitRun call) to the first request
  the model server receives (dispatch, worktree, agent process start, `import litellm`);
- loop overhead per step: time between consecutive model requests when the model answers
  at once (litellm, the tool, the history), i.e. everything but the model's own time;
- node daemon RSS idle and while the llm job runs (the agent is its own process).

    python scripts/bench_agents.py [--trials 5] [--steps 20] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protos.contract import RUN_ACTIVE  # noqa: E402
from tests.fake_openai import FakeOpenAI, call  # noqa: E402
from tests.fleet import Fleet, wait_until  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    first_call: list[float] = []
    per_step: list[float] = []
    rss_busy: list[float] = []
    with tempfile.TemporaryDirectory(prefix="flota-bench-agents-") as tmp:
        fleet = Fleet(Path(tmp) / "home")
        try:
            fleet.start_coordinator()
            node = fleet.start_node("bench")
            daemon = psutil.Process(node.pid)
            time.sleep(1.0)
            rss_idle = daemon.memory_info().rss / 2**20
            for trial in range(args.trials):
                script = [call("list_files", path=".") for _ in range(args.steps - 1)]
                script.append(call("finish", summary="done"))
                with FakeOpenAI(script) as server:
                    started = time.monotonic()
                    run = fleet.json(
                        "run",
                        "--agent",
                        "llm",
                        "--model",
                        "openai/bench",
                        "--api-base",
                        server.base_url,
                        "--max-steps",
                        str(args.steps + 1),
                        f"trial {trial}",
                    )
                    wait_until(lambda: server.request_times, timeout=60, period=0.005, what="first call")
                    first_call.append(server.request_times[0] - started)
                    samples = []
                    while fleet.json("status", run["id"])["status"] in RUN_ACTIVE:
                        samples.append(daemon.memory_info().rss / 2**20)
                        time.sleep(0.05)
                    times = server.request_times
                    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
                    per_step.append(statistics.median(gaps) if gaps else 0.0)
                    rss_busy.append(max(samples) if samples else daemon.memory_info().rss / 2**20)
                    job = fleet.json("status", run["id"])["jobs"][0]
                    assert job["status"] == "success" and job["result"]["steps"] == args.steps, job
        finally:
            fleet.close()

    def row(name: str, values: list[float], unit: str, scale: float = 1.0) -> dict[str, object]:
        v = [x * scale for x in values]
        print(f"{name:<34} {statistics.median(v):9.1f} {min(v):9.1f} {max(v):9.1f}  {unit}")
        return {"measure": name, "median": statistics.median(v), "min": min(v), "max": max(v), "unit": unit}

    print(f"{args.trials} trials, {args.steps} model calls each, instant model on loopback")
    print(f"{'measure':<34} {'median':>9} {'min':>9} {'max':>9}")
    rows = [
        row("submit -> first model call", first_call, "ms", 1000),
        row("loop overhead per step", per_step, "ms", 1000),
        row("node daemon RSS while llm job runs", rss_busy, "MB"),
    ]
    print(f"{'node daemon RSS idle':<34} {rss_idle:9.1f}  MB")
    rows.append({"measure": "node daemon RSS idle", "median": rss_idle, "unit": "MB"})
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
