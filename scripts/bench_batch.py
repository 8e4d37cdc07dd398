#!/usr/bin/env python3
"""Batch benchmark: a real coordinator on loopback (mTLS) takes a run of 10,000 inputs.

- submit_10k_s: `flota run "python3 score.py {input}" --inputs ids.txt` with 10,000 lines,
  from the command's start to its exit: the inputs read, filled and quoted, the one
  SubmitRun call, every job stored and queued (no node is up, so nothing is dispatched);
- submit_call_10k_s: the SubmitRun call alone (the same request, from a Python client);
- request_mb: that request's size (one gRPC message: at most 4 MiB);
- coordinator RSS before and with the 10,000 queued jobs;
- results_10k_s: `flota results RUN --format jsonl` for the 10,000 rows (BatchResults).

  python scripts/bench_batch.py [--quick] [--json out.json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchreport  # noqa: E402  (the table and JSON of every bench script)

from cli.batch import batch_tasks, read_inputs  # noqa: E402
from cli.client import Client  # noqa: E402
from protos.flota.v1 import coordinator_pb2 as pb  # noqa: E402
from tests.fleet import Fleet  # noqa: E402

TEMPLATE = "python3 score.py {input}"


def _cli(
    fleet: Fleet, *args: str, ok: tuple[int, ...] = (0,)
) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    done = fleet.flota(*args, timeout=600)
    took = time.perf_counter() - t0
    if done.returncode not in ok or done.stderr:
        raise RuntimeError(f"flota {' '.join(args[:3])} failed: {done.stderr.strip()}")
    return took, done


def run(quick: bool) -> dict[str, Any]:
    count = 2_000 if quick else 10_000
    with tempfile.TemporaryDirectory(prefix="flota-bench-batch-") as tmp:
        fleet = Fleet(Path(tmp) / "home")
        saved = os.environ.get("FLOTA_HOME")
        try:
            info = fleet.start_coordinator()
            coordinator = psutil.Process(int(info["pid"]))
            ids = Path(tmp) / "ids.txt"
            # Inputs as a batch has them: now and then one with a space and a quote.
            ids.write_text(
                "".join(f"item-{i}{' it' + chr(39) + 's' if i % 7 == 0 else ''}\n" for i in range(count))
            )
            rss_before = coordinator.memory_info().rss / 2**20
            cli_s, done = _cli(fleet, "run", TEMPLATE, "--inputs", str(ids))
            run_id = done.stdout.split()[1].rstrip(":")
            rss_queued = coordinator.memory_info().rss / 2**20
            results_s, out = _cli(
                fleet, "results", run_id, "--format", "jsonl", ok=(0, 1)
            )  # 1: not all succeeded
            statuses = [json.loads(line)["status"] for line in out.stdout.splitlines()]
            fleet.flota("cancel", run_id)

            # The same request again, the call alone, from this process.
            request = pb.SubmitRunRequest(
                tasks=batch_tasks("shell", TEMPLATE, read_inputs(str(ids), False), [], {})
            )
            request.brief = True
            os.environ["FLOTA_HOME"] = str(fleet.home)
            client = Client()
            t0 = time.perf_counter()
            again = client.submit_run(request)
            call_s = time.perf_counter() - t0
            client.cancel(again.id)
        finally:
            fleet.close()
            if saved is None:
                os.environ.pop("FLOTA_HOME", None)
            else:
                os.environ["FLOTA_HOME"] = saved
    return {
        "inputs": count,
        "submit_10k_s": round(cli_s, 3),
        "submit_call_10k_s": round(call_s, 3),
        "request_mb": round(request.ByteSize() / 1e6, 2),
        "jobs_queued": statuses.count("queued"),
        "coordinator_rss_mb": {"before": round(rss_before, 1), "with_10k_queued": round(rss_queued, 1)},
        "results_10k_s": round(results_s, 3),
        "results_rows": len(statuses),
    }


def rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    n = f"{r['inputs']:,}"
    rss = r["coordinator_rss_mb"]
    return [
        (f"flota run --inputs ({n} lines), to all queued", f"{r['submit_10k_s']:.2f} s"),
        ("  of it the one SubmitRun call", f"{r['submit_call_10k_s']:.2f} s ({r['request_mb']} MB)"),
        ("jobs queued", f"{r['jobs_queued']:,}"),
        (
            "coordinator RSS: before / with the run queued",
            f"{rss['before']:.0f} / {rss['with_10k_queued']:.0f} MB",
        ),
        (f"flota results --format jsonl ({r['results_rows']:,} rows)", f"{r['results_10k_s']:.2f} s"),
    ]


if __name__ == "__main__":
    raise SystemExit(benchreport.main(__doc__, run, rows, "2,000 inputs instead of 10,000"))
