#!/usr/bin/env python3
"""`flota dashboard`'s numbers, against a real coordinator on loopback and Debian's
chromium (headless, through Playwright):

- time to first paint of the fleet and runs views, with N nodes and J jobs in the store
  (the page loaded with its token until every node card, or the runs table, is drawn);
- event latency from a job's state change (the event's time, set by the coordinator) to
  the browser (an EventSource in the page), p50/p99, over sequential one-job runs;
- coordinator CPU, idle, with no dashboard, one dashboard with one page, ten dashboards
  with a page each, and one dashboard with ten pages;
- dispatch throughput (bulk runs of `true`) with ten dashboards open against none.

    python scripts/bench_dashboard.py [--quick] [--nodes N] [--jobs J] [--json out.json]

Nodes: 2 real node daemons (4 slots each) by default; `--nodes 200` enrolls that many and
runs them in 4 processes of scripts/scale_nodes.py (as bench_scale.py). Figures only: no
assertion; the machine may be shared (see "machine busy").
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
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

from bench_dispatch import SLOTS, bulk, one_job  # noqa: E402
from bench_ray import latency  # noqa: E402
from bench_scale import _enroll, _online, _stop_group  # noqa: E402
from benchreport import emit  # noqa: E402

from cli.client import Client  # noqa: E402
from tests.fleet import Fleet, wait_until  # noqa: E402

SCALE_PROCS = 4
DISPATCH_MODES = ("none", "ten dashboards, no page", "ten dashboards, a page each")
RECORDER = """() => {
    window.__lags = [];
    const source = new EventSource('/api/events');
    source.onmessage = (e) => {
        const m = JSON.parse(e.data);
        if (m.job && m.type !== 'job.snapshot') window.__lags.push(Date.now() / 1000 - m.at);
    };
}"""


class Dashboard:
    def __init__(self, fleet: Fleet) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "--json", "dashboard", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            env=fleet.env,
            cwd=fleet.home,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout or []], daemon=True).start()
        self.url = json.loads(lines.get(timeout=60))["url"]
        self.ps = psutil.Process(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _idle_cpu(coord: psutil.Process, dashboards: list[Dashboard], seconds: float) -> dict[str, float]:
    c0, d0, t0 = _cpu(coord), [_cpu(d.ps) for d in dashboards], time.monotonic()
    time.sleep(seconds)
    span = time.monotonic() - t0
    out = {"coordinator_pct": 100 * (_cpu(coord) - c0) / span}
    if dashboards:
        out["dashboards_pct"] = 100 * sum(_cpu(d.ps) - a for d, a in zip(dashboards, d0, strict=True)) / span
    return out


def _machine_busy(seconds: float) -> float:
    return psutil.cpu_percent(interval=seconds)


def _first_paint(browser: Any, url: str, fragment: str, ready: str) -> dict[str, float]:
    """Milliseconds from navigation to `ready` (a JS condition) holding, and chromium's own
    first contentful paint."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        page.goto(url + fragment)  # the token (then a redirect that keeps the fragment), the view
        page.wait_for_function(ready, timeout=120_000, polling="raf")
        drawn = page.evaluate("performance.now()")
        fcp = page.evaluate(
            "(performance.getEntriesByName('first-contentful-paint')[0] || {startTime: 0}).startTime"
        )
        return {"drawn_ms": drawn, "first_contentful_paint_ms": fcp}
    finally:
        context.close()


def _start_nodes(fleet: Fleet, client: Client, n: int) -> list[subprocess.Popen[bytes]]:
    if n <= 2:
        for i in range(1, n + 1):
            fleet.start_node(f"n{i}", "--slots", str(SLOTS))
        return []
    states = _enroll(client, fleet.home, [f"s{i:03d}" for i in range(n)])
    per = -(-n // SCALE_PROCS)
    workers = []
    for k in range(0, n, per):
        with open(fleet.home / f"nodes-{k}.log", "ab") as out:
            workers.append(
                subprocess.Popen(
                    [sys.executable, str(ROOT / "scripts" / "scale_nodes.py"), "--stats",
                     str(fleet.home / f"nodes-{k}.json"), "--slots", "1", *map(str, states[k : k + per])],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=fleet.env,
                    cwd=fleet.home, start_new_session=True,
                )
            )  # fmt: skip
    wait_until(lambda: _online(client)[0] == n, timeout=120 + n, what=f"{n} nodes online", period=0.5)
    return workers


def run(quick: bool, nodes: int, jobs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("bench_dashboard: no chromium on PATH (apt-get install chromium)")
    idle_s = 5.0 if quick else 15.0
    latency_runs = 60 if quick else 200
    report: dict[str, Any] = {"nodes": nodes, "jobs": jobs, "idle_window_s": idle_s, "cpus": os.cpu_count()}
    report["machine_busy_before_pct"] = _machine_busy(2.0)
    tmp = Path(tempfile.mkdtemp(prefix="flota-bench-dashboard-"))
    fleet = Fleet(tmp / "home")
    workers: list[subprocess.Popen[bytes]] = []
    dashboards: list[Dashboard] = []
    try:
        fleet.start_coordinator()
        os.environ["FLOTA_HOME"] = str(fleet.home)
        client = Client()
        coord = psutil.Process(fleet.procs["coordinator"].pid)
        workers = _start_nodes(fleet, client, nodes)
        t0 = time.perf_counter()
        bulk(client, jobs)
        report["store_fill_s"] = time.perf_counter() - t0
        time.sleep(2.0)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            one = Dashboard(fleet)
            dashboards.append(one)
            time.sleep(1.0)
            runs_shown = len(client.list_runs(100).runs)
            report["first_paint"] = {
                "fleet": _first_paint(
                    browser, one.url, "", f"document.querySelectorAll('[data-node]').length >= {nodes}"
                ),
                "runs": _first_paint(
                    browser,
                    one.url,
                    "#/runs",
                    f"document.querySelectorAll('tr[data-run]').length >= {runs_shown}",
                ),
            }

            # Event latency: a page listening, one-job runs one after the other.
            context = browser.new_context()
            page = context.new_page()
            page.goto(one.url)
            page.evaluate(RECORDER)
            time.sleep(1.0)
            for _ in range(latency_runs):
                one_job(client)
            time.sleep(1.0)
            lags = [x * 1000 for x in page.evaluate("window.__lags")]
            report["event_lag_ms"] = {**latency(lags), "events": len(lags)}
            context.close()

            # Idle CPU.
            report["idle"] = {"none": _idle_cpu(coord, [], idle_s)}
            pages = [browser.new_context().new_page()]
            pages[0].goto(one.url)
            report["idle"]["one dashboard, one page"] = _idle_cpu(coord, dashboards, idle_s)
            for _ in range(9):
                pages.append(browser.new_context().new_page())
                pages[-1].goto(one.url)
            report["idle"]["one dashboard, ten pages"] = _idle_cpu(coord, dashboards, idle_s)
            for pg in pages[1:]:
                pg.context.close()
            for _ in range(9):
                dashboards.append(Dashboard(fleet))
                pages.append(browser.new_context().new_page())
                pages[-1].goto(dashboards[-1].url)
            time.sleep(2.0)
            report["idle"]["ten dashboards, a page each"] = _idle_cpu(coord, dashboards, idle_s)

            # Dispatch: none, ten dashboards without pages, ten with a page each; rounds alternate.
            rates: dict[str, list[float]] = {m: [] for m in DISPATCH_MODES}
            cpu: dict[str, list[dict[str, float]]] = {m: [] for m in DISPATCH_MODES}
            n = 300 if quick else 1000
            for pg in pages:
                pg.context.close()
            pages = []
            for _ in range(2 if quick else 3):
                for mode in DISPATCH_MODES:
                    if mode == "ten dashboards, a page each":
                        pages = [browser.new_context().new_page() for _ in dashboards]
                        for pg, d in zip(pages, dashboards, strict=True):
                            pg.goto(d.url)
                        time.sleep(1.0)
                    shown = dashboards if mode != "none" else []
                    c0, d0, t0 = _cpu(coord), sum(_cpu(d.ps) for d in shown), time.monotonic()
                    rates[mode].append(bulk(client, n))
                    span = time.monotonic() - t0
                    cpu[mode].append(
                        {
                            "coordinator_pct": 100 * (_cpu(coord) - c0) / span,
                            "dashboards_pct": 100 * (sum(_cpu(d.ps) for d in shown) - d0) / span,
                        }
                    )
                    for pg in pages:
                        pg.context.close()
                    pages = []
            browser.close()
        report["dispatch_per_s"] = {m: {"median": statistics.median(v), "all": v} for m, v in rates.items()}
        report["dispatch_cpu"] = {
            m: {k: statistics.median(x[k] for x in v) for k in v[0]} for m, v in cpu.items()
        }
        report["dispatch_jobs"] = n
        client.close()
    finally:
        for d in dashboards:
            d.stop()
        for w in workers:
            _stop_group(w)
        fleet.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    out = [("machine busy before", f"{report['machine_busy_before_pct']:.0f}% of {report['cpus']} cores")]
    where = f"{report['nodes']} nodes, {report['jobs']} jobs"
    for view, r in report["first_paint"].items():
        out.append(
            (
                f"first paint, {view} view ({where})",
                f"{r['drawn_ms']:.0f} ms drawn"
                f" (first contentful paint {r['first_contentful_paint_ms']:.0f} ms)",
            )
        )
    lag = report["event_lag_ms"]
    out.append(
        ("job event -> browser", f"p50 {lag['p50']:.1f} ms  p99 {lag['p99']:.1f} ms ({lag['events']} events)")
    )
    for mode, r in report["idle"].items():
        mine = f", the dashboards {r['dashboards_pct']:.1f}%" if "dashboards_pct" in r else ""
        out.append((f"idle, {mode}", f"coordinator {r['coordinator_pct']:.1f}% CPU{mine}"))
    base = report["dispatch_per_s"]["none"]["median"]
    for mode in DISPATCH_MODES:
        r, c = report["dispatch_per_s"][mode], report["dispatch_cpu"][mode]
        spread = ", ".join(f"{x:.0f}" for x in r["all"])
        out.append(
            (
                f"bulk {report['dispatch_jobs']} jobs, {mode}",
                f"{r['median']:.0f} jobs/s ({spread}); x{r['median'] / base:.2f}; coordinator"
                f" {c['coordinator_pct']:.0f}% CPU, dashboards {c['dashboards_pct']:.0f}%",
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer runs")
    parser.add_argument("--nodes", type=int, default=2, help="2 real daemons, or N in scale_nodes processes")
    parser.add_argument(
        "--jobs", type=int, default=0, help="jobs in the store first (default 500, quick 200)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    opts = parser.parse_args()
    report = run(opts.quick, opts.nodes, opts.jobs or (200 if opts.quick else 500))
    emit(rows(report), report, opts.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
