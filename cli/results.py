"""A run's results as rows (`flota results RUN --format jsonl|csv|md`), and the lines a
batch's submit prints.

One row per job, in input order (the coordinator streams them: BatchResults), each with
its input, status, the answer (the llm agent's final message; another agent's, else the
job's output tail), tokens, cost, and for a row that did not succeed, why.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from cli.client import Client, CliError
from cli.render import count
from protos.flota.v1 import coordinator_pb2
from protos.limits import MAX_FULL_RUN_JOBS

__all__ = ["FIELDS", "FORMATS", "full_jobs", "result_row", "waiting_lines", "write_rows"]

FIELDS = ("job", "input", "model", "status", "answer", "tokens_in", "tokens_out", "cost_usd", "reason")
FORMATS = ("jsonl", "csv", "md")


def result_row(job: coordinator_pb2.Job) -> dict[str, Any]:
    r = job.result
    answer = r.answer if job.agent == "llm" else (r.answer or r.log_tail)
    why = "" if job.status == "success" else (r.error or job.wait_reason or r.reason)
    return {
        "job": job.id,
        "input": job.input_path or job.input,
        "model": job.model,
        "status": job.status,
        "answer": answer,
        "tokens_in": r.tokens_in,
        "tokens_out": r.tokens_out,
        "cost_usd": r.cost_usd,
        "reason": why,
    }


def _cell(value: Any) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    text = f"{value:.6f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>")


def _write(rows: Iterable[dict[str, Any]], fmt: str, out: IO[str]) -> int:
    n = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, FIELDS, lineterminator="\n")
        writer.writeheader()
    elif fmt == "md":
        out.write("| " + " | ".join(FIELDS) + " |\n|" + "---|" * len(FIELDS) + "\n")
    for row in rows:
        n += 1
        if fmt == "jsonl":
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif fmt == "csv":
            writer.writerow(row)
        else:
            out.write("| " + " | ".join(_cell(row[k]) for k in FIELDS) + " |\n")
    return n


def write_rows(jobs: Iterator[coordinator_pb2.Job], fmt: str, output: str | None, stdout: IO[str]) -> bool:
    """Write one row per job in `fmt` to `output` (whole or not at all) or `stdout`;
    whether every job succeeded."""
    if fmt not in FORMATS:
        raise CliError(f"unknown format {fmt!r} (jsonl, csv or md)")
    ok = True
    first = next(jobs, None)  # an unknown run is one line, before any header is written

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal ok
        for job in itertools.chain([first] if first is not None else [], jobs):
            ok = ok and job.status == "success"
            yield result_row(job)

    if output is None:
        _write(rows(), fmt, stdout)
        return ok
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8", newline="") as out:
            n = _write(rows(), fmt, out)
        os.replace(partial, target)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    print(f"{count(n, 'row')} written to {output}", file=stdout)
    return ok


def waiting_lines(jobs: list[coordinator_pb2.Job], batch: bool) -> list[str]:
    """Why jobs cannot start yet: one line each, or for a batch one line per reason."""
    if not batch:
        return [f"  {job.id}: {job.wait_reason}" for job in jobs]
    reasons: dict[str, int] = {}
    for job in jobs:
        reasons[job.wait_reason] = reasons.get(job.wait_reason, 0) + 1
    return [f"  {count(n, 'job')}: {why}" for why, n in reasons.items()]


def full_jobs(client: Client, run: coordinator_pb2.Run) -> coordinator_pb2.Run:
    """`run` with its jobs whole: a run of more than MAX_FULL_RUN_JOBS comes with brief
    ones (they would not fit in one message), so they are fetched again, streamed."""
    if len(run.jobs) > MAX_FULL_RUN_JOBS:
        jobs = list(client.batch_results(run.id))
        del run.jobs[:]
        run.jobs.extend(jobs)
    return run
