"""`flota run --follow`: live progress of a run until it ends."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.live import Live

from cli.client import Client
from cli.render import console, jobs_table
from protos.contract import RUN_ACTIVE
from protos.flota.v1 import coordinator_pb2

__all__ = ["follow_run"]


def _watch(client: Client, run_id: str, on_job: Callable[[coordinator_pb2.Job], None]) -> coordinator_pb2.Run:
    """Job updates until the run ends. A stream the coordinator ends early (this watcher
    fell behind) is simply opened again: each new stream starts with every job's state."""
    while True:
        for event in client.watch_run(run_id):
            kind = event.WhichOneof("kind")
            if kind == "job":
                on_job(event.job)
            elif kind == "run":
                return event.run
        run = client.get_run(run_id)
        if run.status not in RUN_ACTIVE:
            return run


def follow_run(
    client: Client, run: coordinator_pb2.Run, live: bool, quiet: bool = False
) -> coordinator_pb2.Run:
    """Watch until the run ends; returns the final run. A TTY gets a live table, anything
    else one line per job change (readable in CI logs)."""
    jobs = {j.id: j for j in run.jobs}
    current = coordinator_pb2.Run()
    current.CopyFrom(run)
    started = time.monotonic()

    def snapshot() -> coordinator_pb2.Run:
        del current.jobs[:]
        current.jobs.extend(jobs[j.id] for j in run.jobs)
        return current

    if live:
        with Live(jobs_table(snapshot()), console=console, refresh_per_second=8, transient=True) as view:

            def update(job: coordinator_pb2.Job) -> None:
                jobs[job.id] = job
                view.update(jobs_table(snapshot()))

            final = _watch(client, run.id, update)
    else:
        seen: dict[str, str] = {}

        def report(job: coordinator_pb2.Job) -> None:
            jobs[job.id] = job
            shown = job.status + (
                f": {job.wait_reason}" if job.status in ("queued", "waiting") and job.wait_reason else ""
            )
            if seen.get(job.id) != shown and not quiet:
                seen[job.id] = shown
                where = f" on {job.node_name}" if job.node_name else ""
                console.print(f"[{time.monotonic() - started:6.2f}s] {job.id} {shown}{where}", markup=False)

        final = _watch(client, run.id, report)
    if not quiet:
        console.print(f"run {final.id} {final.status} in {max(final.finished_at - final.created_at, 0):.1f}s")
    return final
