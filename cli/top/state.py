"""The fleet as the event stream tells it: nodes, runs and jobs by id. Pure: events in,
what changed out; the TUI renders from it (and tests read it)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from protos.flota.v1 import coordinator_pb2 as pb

__all__ = ["ACTIVE", "MAX_JOBS", "FleetState", "job_row", "node_row"]

ACTIVE = ("waiting", "queued", "dispatching", "running")
MAX_JOBS = 500  # ended jobs beyond this are forgotten, oldest first


@dataclass
class FleetState:
    nodes: dict[str, pb.NodeStatus] = field(default_factory=dict)
    runs: dict[str, pb.Run] = field(default_factory=dict)
    jobs: dict[str, pb.Job] = field(default_factory=dict)
    index: int = 0
    live: bool = False  # the snapshot is complete

    def apply(self, event: pb.Event) -> set[str]:
        """Take one event; the panes it changes ("nodes", "jobs")."""
        self.index = max(self.index, event.index)
        if event.type == "resync":
            self.nodes.clear()
            self.runs.clear()
            self.jobs.clear()
            self.live = False
            return {"nodes", "jobs"}
        if event.type == "live":
            self.live = True
            return set()
        kind = event.WhichOneof("subject")
        if kind == "node":
            if event.type == "node.removed":
                self.nodes.pop(event.node.info.id, None)
            else:
                self.nodes[event.node.info.id] = event.node
            return {"nodes"}
        if kind == "run":
            if event.type == "run.removed":  # pruned: its jobs go with it
                self.runs.pop(event.run.id, None)
                for job_id in [j for j, job in self.jobs.items() if job.run_id == event.run.id]:
                    del self.jobs[job_id]
            else:
                self.runs[event.run.id] = event.run
            return {"jobs"}
        if kind == "job":
            self.jobs[event.job.id] = event.job
            self._forget_old()
            return {"jobs"}
        return set()

    def _forget_old(self) -> None:
        if len(self.jobs) <= MAX_JOBS:
            return
        ended = sorted((j for j in self.jobs.values() if j.status not in ACTIVE), key=lambda j: j.updated_at)
        for job in ended[: len(self.jobs) - MAX_JOBS]:
            del self.jobs[job.id]

    def sorted_nodes(self) -> list[pb.NodeStatus]:
        return sorted(self.nodes.values(), key=lambda n: n.info.name)

    def sorted_jobs(self, text: str = "") -> list[pb.Job]:
        """Active jobs first (running, then placed, queued, waiting on others), then the latest ended;
        `text` keeps those whose id, task, node or status contains it."""
        order = {"running": 0, "dispatching": 1, "queued": 2, "waiting": 3}  # then ended (4)
        wanted = text.lower()
        jobs = [
            j
            for j in self.jobs.values()
            if not wanted or any(wanted in f.lower() for f in (j.id, j.name, j.node_name, j.status))
        ]
        return sorted(jobs, key=lambda j: (order.get(j.status, 4), -j.updated_at, j.id))


def node_row(n: pb.NodeStatus, now: float | None = None) -> tuple[str, ...]:
    """NAME STATE NET SLOTS LOAD MEM BATT VERSION"""
    i, f = n.info, n.info.facts
    state = n.state
    if state in ("unreachable", "lost") and n.last_seen:
        state += f" {max((now or time.time()) - n.last_seen, 0):.0f}s"
    mem = f"{f.memory_available_mb / 1024:.1f}/{f.memory_total_mb / 1024:.0f}G" if f.memory_total_mb else "-"
    battery = (
        "-"
        if f.battery_percent < 0 or not f.cpu_count
        else f"{f.battery_percent}%{'' if f.on_battery else '+'}"
    )
    return (
        i.name or i.id,
        state,
        i.network or "-",
        f"{i.running}/{i.slots}" if i.slots else "-",
        f"{f.load_1m:.1f}" if f.cpu_count else "-",
        mem,
        battery,
        i.version or "-",
    )


def job_row(j: pb.Job, now: float | None = None) -> tuple[str, ...]:
    """JOB STATUS NODE ELAPSED COST TASK (the task last: it takes what width is left)."""
    r = j.result
    if j.status in ACTIVE:
        started = j.attempts[-1].started_at if j.attempts and j.attempts[-1].started_at else 0.0
        elapsed = f"{(now or time.time()) - started:.0f}s" if started else "-"
    else:
        elapsed = f"{r.duration_s:.1f}s" if r.duration_s else "-"
    cost = f"${r.cost_usd:.4f}" if r.cost_usd else "-"
    note = (
        j.wait_reason
        if j.status in ("queued", "waiting") and j.wait_reason
        else (r.error.splitlines()[0] if r.error else "")
    )
    task = j.name + (f" ({note})" if note else "")
    return (j.id, j.status, j.node_name or "-", elapsed, cost, task)
