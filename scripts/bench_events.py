#!/usr/bin/env python3
"""The event stream's cost to dispatch: a real coordinator and 2 node daemons on loopback
(as bench_dispatch), bulk runs of `true` jobs with no reader, with ten readers that read
everything, and with one reader that never reads (its queue bounded; it is resynced, the
coordinator never waits for it). Rounds alternate the three, side by side in one run.
Also: the coordinator's CPU time per job in each case (user + system, from its process:
what the readers cost it, less swayed by other work on the machine than jobs/s), and the
latency from a job's state change to a reader (job.success event time to its arrival;
same machine, same clock).

    python scripts/bench_events.py [--quick] [--json out.json]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchreport  # noqa: E402
from bench_dispatch import NODES, SLOTS, bulk, one_job  # noqa: E402
from bench_ray import latency  # noqa: E402

from cli.client import Client  # noqa: E402
from tests.fleet import Fleet  # noqa: E402

MODES = ("none", "ten readers", "one stalled reader")


class Readers:
    """`n` StreamEvents readers on their own channels; `stalled` ones read the first event only."""

    def __init__(self, n: int, stalled: bool) -> None:
        self.clients = [Client() for _ in range(n)]
        self.lags: list[float] = []
        self.events = 0
        self._streams = [c.stream_events(0, []) for c in self.clients]
        self.threads = [
            threading.Thread(target=self._read, args=(s, stalled), daemon=True) for s in self._streams
        ]
        for t in self.threads:
            t.start()

    def _read(self, stream: Any, stalled: bool) -> None:
        try:
            for event in stream:
                if stalled:
                    time.sleep(3600)  # holds the stream open, reads nothing more
                self.events += 1
                if event.type == "job.success":
                    self.lags.append((time.time() - event.at) * 1000)
        except Exception:  # closed at the end of the round
            return

    def close(self) -> None:
        for c in self.clients:
            c.close()


def run(quick: bool) -> dict[str, Any]:
    rounds, jobs = (2, 500) if quick else (4, 2000)
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    cpu_ms: dict[str, list[float]] = {m: [] for m in MODES}
    lags: list[float] = []
    events = 0
    with tempfile.TemporaryDirectory(prefix="flota-bench-") as tmp:
        fleet = Fleet(Path(tmp) / "home")
        try:
            fleet.start_coordinator()
            coordinator = psutil.Process(fleet.procs["coordinator"].pid)
            for i in range(1, NODES + 1):
                fleet.start_node(f"n{i}", "--slots", str(SLOTS))
            os.environ["FLOTA_HOME"] = str(fleet.home)
            client = Client()
            for _ in range(30):
                one_job(client)  # warm up
            for _ in range(rounds):
                for mode in MODES:
                    readers = (
                        Readers(10, False)
                        if mode == "ten readers"
                        else Readers(1, True)
                        if mode != "none"
                        else None
                    )
                    time.sleep(0.5)
                    before = coordinator.cpu_times()
                    rates[mode].append(bulk(client, jobs))
                    after = coordinator.cpu_times()
                    used = after.user + after.system - before.user - before.system
                    cpu_ms[mode].append(used * 1000 / jobs)
                    if readers is not None:
                        time.sleep(0.5)
                        if mode == "ten readers":
                            lags += readers.lags
                            events += readers.events
                        readers.close()
            client.close()
        finally:
            fleet.close()
    return {
        "jobs_per_round": jobs,
        "rounds": rounds,
        "per_s": {m: {"median": statistics.median(v), "all": v} for m, v in rates.items()},
        "coordinator_cpu_ms_per_job": {
            m: {"median": statistics.median(v), "all": v} for m, v in cpu_ms.items()
        },
        "event_lag_ms": latency(lags) if lags else {},
        "events_read": events,
    }


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    base = report["per_s"]["none"]["median"]
    out = []
    for mode in MODES:
        r = report["per_s"][mode]
        spread = ", ".join(f"{x:.0f}" for x in r["all"])
        out.append(
            (
                f"bulk {report['jobs_per_round']}, {mode}",
                f"{r['median']:.0f} jobs/s ({spread}); x{r['median'] / base:.2f}",
            )
        )
    cpu = report["coordinator_cpu_ms_per_job"]
    for mode in MODES:
        c = cpu[mode]
        spread = ", ".join(f"{x:.2f}" for x in c["all"])
        ratio = c["median"] / cpu["none"]["median"]
        out.append((f"coordinator CPU per job, {mode}", f"{c['median']:.2f} ms ({spread}); x{ratio:.2f}"))
    lag = report["event_lag_ms"]
    if lag:
        out.append(("job.success -> reader", f"p50 {lag['p50']:.1f} ms  p99 {lag['p99']:.1f} ms"))
    return out


def main() -> int:
    return benchreport.main(__doc__, run, rows, "2 rounds of 500 jobs")


if __name__ == "__main__":
    raise SystemExit(main())
