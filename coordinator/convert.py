"""Proto <-> model conversions: the only place both kinds of type meet."""

from __future__ import annotations

from dataclasses import fields

from coordinator.models import Attempt, Job, Result, Run
from protos.flota.v1 import coordinator_pb2, types_pb2

__all__ = ["attempt_to_pb", "job_to_pb", "result_from_pb", "result_to_pb", "run_to_pb"]

_RESULT_FIELDS = tuple(f.name for f in fields(Result))


def result_from_pb(msg: types_pb2.JobResult) -> Result:
    values = {name: getattr(msg, name) for name in _RESULT_FIELDS}
    values["files_modified"] = tuple(msg.files_modified)
    return Result(**values)


def result_to_pb(result: Result, job_id: str = "", attempt_id: str = "") -> types_pb2.JobResult:
    values = {name: getattr(result, name) for name in _RESULT_FIELDS}
    values["files_modified"] = list(result.files_modified)
    return types_pb2.JobResult(job_id=job_id, attempt_id=attempt_id, **values)


def attempt_to_pb(attempt: Attempt, node_names: dict[str, str]) -> coordinator_pb2.Attempt:
    return coordinator_pb2.Attempt(
        id=attempt.id,
        number=attempt.number,
        node_id=attempt.node_id,
        node_name=node_names.get(attempt.node_id, ""),
        status=attempt.status,
        branch=attempt.branch,
        created_at=attempt.created_at,
        started_at=attempt.started_at,
        finished_at=attempt.finished_at,
        error=attempt.error,
    )


def job_to_pb(job: Job, node_names: dict[str, str]) -> coordinator_pb2.Job:
    msg = coordinator_pb2.Job(
        id=job.id,
        run_id=job.run_id,
        name=job.name,
        agent=job.agent,
        command=job.command,
        prompt=job.prompt,
        model=job.model,
        status=job.status,
        node_id=job.node_id,
        node_name=node_names.get(job.node_id, ""),
        branch=job.branch,
        wait_reason=job.wait_reason,
        attempts=[attempt_to_pb(a, node_names) for a in job.attempts],
        created_at=job.created_at,
        updated_at=job.updated_at,
        max_steps=job.max_steps,
        budget_usd=job.budget_usd,
        check=job.check,
        requires=job.requires,
    )
    if job.result is not None:
        last = job.attempts[-1].id if job.attempts else ""
        msg.result.CopyFrom(result_to_pb(job.result, job.id, last))
    return msg


def run_to_pb(run: Run, node_names: dict[str, str], with_jobs: bool = True) -> coordinator_pb2.Run:
    return coordinator_pb2.Run(
        id=run.id,
        name=run.name,
        status=run.status,
        created_at=run.created_at,
        finished_at=run.finished_at,
        repo_url=run.repo_url,
        base_commit=run.base_commit,
        jobs=[job_to_pb(j, node_names) for j in run.jobs] if with_jobs else [],
    )
