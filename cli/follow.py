"""`flota run --follow`: live progress of a run until it ends."""

from __future__ import annotations

import time

from rich.live import Live

from cli.client import Client
from cli.render import console, jobs_table
from protos.flota.v1 import coordinator_pb2

__all__ = ["follow_run"]


def follow_run(
    client: Client, run: coordinator_pb2.Run, live: bool, quiet: bool = False
) -> coordinator_pb2.Run:
    """Watch until the run ends; returns the final run. A TTY gets a live table, anything
    else one line per job change (readable in CI logs)."""
    jobs = {j.id: j for j in run.jobs}
    order = [j.id for j in run.jobs]
    current = coordinator_pb2.Run()
    current.CopyFrom(run)

    def snapshot() -> coordinator_pb2.Run:
        del current.jobs[:]
        current.jobs.extend(jobs[i] for i in order)
        return current

    events = client.stream("WatchRun", coordinator_pb2.WatchRunRequest(run_id=run.id))
    final = None
    started = time.monotonic()
    if live:
        with Live(jobs_table(snapshot()), console=console, refresh_per_second=8, transient=True) as view:
            for event in events:
                kind = event.WhichOneof("kind")
                if kind == "job":
                    jobs[event.job.id] = event.job
                    view.update(jobs_table(snapshot()))
                elif kind == "run":
                    final = event.run
                    break
    else:
        seen: dict[str, str] = {}
        for event in events:
            kind = event.WhichOneof("kind")
            if kind == "job":
                j = event.job
                jobs[j.id] = j
                if seen.get(j.id) != j.status and not quiet:
                    seen[j.id] = j.status
                    where = f" on {j.node_name}" if j.node_name else ""
                    console.print(f"[{time.monotonic() - started:6.2f}s] {j.id} {j.status}{where}")
            elif kind == "run":
                final = event.run
                break
    if final is None:  # the stream ended without the closing event: read the run back
        final = client.call("GetRun", coordinator_pb2.GetRunRequest(run_id=run.id))
        assert isinstance(final, coordinator_pb2.Run)
    if not quiet:
        console.print(f"run {final.id} {final.status} in {max(final.finished_at - final.created_at, 0):.1f}s")
    return final
