#!/usr/bin/env python3
"""The metering proxy's cost, side by side in one run: chat completion calls to a loopback
OpenAI-compatible server (tests/fake_openai.py), straight to it ("direct") and through a
job's metering proxy (node_agent.meter, as the node starts it), alternating, one
keep-alive connection each:
  - per-call latency of each (p50/p99) and what the proxy adds at p50;
  - the proxy's start (process up, price map read, port said) and its memory (RSS).

    python scripts/bench_meter.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import benchreport  # noqa: E402
from bench_ray import latency  # noqa: E402

from node_agent.meter import control  # noqa: E402
from node_agent.models import Job  # noqa: E402
from tests.fake_openai import FakeOpenAI, text  # noqa: E402

KINDS = ("direct", "metered")
BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say ok"}], "max_tokens": 64}
).encode()


def caller(base: str, key: str) -> Any:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    def call() -> float:
        start = time.perf_counter()
        conn.request("POST", f"{url.path}/chat/completions", BODY, headers)
        reply = conn.getresponse()
        data = reply.read()
        assert reply.status == 200, data
        return (time.perf_counter() - start) * 1000

    return call


def run(quick: bool) -> dict[str, Any]:
    n = 300 if quick else 2000
    with tempfile.TemporaryDirectory(prefix="flota-bench-") as tmp, FakeOpenAI(default=text("ok")) as server:
        job = Job(job_id="b.0", run_id="b", attempt_id="b.0.1", budget_usd=1000.0, api_base=server.base_url)
        started = time.perf_counter()
        meter = asyncio.run(control.start(job, Path(tmp), {"OPENAI_API_KEY": "sk-bench"}))
        start_ms = (time.perf_counter() - started) * 1000
        try:
            calls = {
                "direct": caller(server.base_url, "sk-bench"),
                "metered": caller(meter.openai_url, meter.token),
            }
            for _ in range(50):  # warm up both
                for k in KINDS:
                    calls[k]()
            times: dict[str, list[float]] = {k: [] for k in KINDS}
            for _ in range(n):
                for k in KINDS:
                    times[k].append(calls[k]())
            rss_mb = psutil.Process(meter.process.pid).memory_info().rss / 2**20
        finally:
            figures, _ = asyncio.run(meter.end())
    return {
        "n": n,
        "latency_ms": {k: latency(v) for k, v in times.items()},
        "proxy_start_ms": start_ms,
        "proxy_rss_mb": rss_mb,
        "metered_calls": figures.calls,
    }


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    lat = report["latency_ms"]
    out = [(f"chat call, {k}", f"p50 {lat[k]['p50']:.2f} ms  p99 {lat[k]['p99']:.2f} ms") for k in KINDS]
    out.append(("added by the proxy, p50", f"{lat['metered']['p50'] - lat['direct']['p50']:.2f} ms"))
    out.append(("proxy start (process, price map, port)", f"{report['proxy_start_ms']:.0f} ms"))
    out.append(("proxy memory (RSS)", f"{report['proxy_rss_mb']:.1f} MB"))
    out.append(("calls the proxy counted", str(report["metered_calls"])))
    return out


def main() -> int:
    return benchreport.main(__doc__, run, rows, "300 calls each")


if __name__ == "__main__":
    raise SystemExit(main())
