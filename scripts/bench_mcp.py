#!/usr/bin/env python3
"""`flota mcp`'s tool call round trip: the mcp SDK's stdio client calling `run_status`
(one GetRun to the coordinator) and `list_nodes` against a local fleet (a coordinator,
one node daemon), N calls each after one warm-up; p50 and p90.

    python scripts/bench_mcp.py [--quick] [--json out.json]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median, quantiles
from typing import Any

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchreport  # noqa: E402

from tests.fleet import Fleet  # noqa: E402


async def _calls(fleet: Fleet, run_id: str, n: int) -> dict[str, list[float]]:
    env = {**os.environ, "FLOTA_HOME": str(fleet.home), "PYTHONPATH": str(ROOT)}
    params = StdioServerParameters(command=sys.executable, args=["-m", "cli", "mcp"], env=env)
    times: dict[str, list[float]] = {"run_status": [], "list_nodes": []}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for name, args in (("run_status", {"run_id": run_id}), ("list_nodes", {})):
            await session.call_tool(name, args)  # warm-up: the client's channel
            for _ in range(n):
                start = time.perf_counter()
                result = await session.call_tool(name, args)
                times[name].append(time.perf_counter() - start)
                assert not result.is_error, result.content
    return times


def run(quick: bool) -> dict[str, Any]:
    n = 30 if quick else 200
    with tempfile.TemporaryDirectory(prefix="flota-bench-") as tmp:
        fleet = Fleet(Path(tmp) / "home")
        try:
            fleet.start_coordinator()
            fleet.start_node("n1")
            done = fleet.json("run", "true", "--follow", timeout=120)
            times = anyio.run(_calls, fleet, done["id"], n)
        finally:
            fleet.close()
    return {
        "calls": n,
        **{f"{k}_p50_ms": median(v) * 1000 for k, v in times.items()},
        **{f"{k}_p90_ms": quantiles(v, n=10)[-1] * 1000 for k, v in times.items()},
    }


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (
            f"MCP {tool} round trip ({report['calls']} calls)",
            f"p50 {report[f'{tool}_p50_ms']:.1f} ms, p90 {report[f'{tool}_p90_ms']:.1f} ms",
        )
        for tool in ("run_status", "list_nodes")
    ]


if __name__ == "__main__":
    sys.exit(benchreport.main(__doc__, run, rows, "30 calls per tool instead of 200"))
