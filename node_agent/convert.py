"""Every proto <-> model translation on the node, in one place.

The servicer converts what arrives (``JobSpec`` -> :class:`~node_agent.models.Job`) and
what it answers (``ListJobs``); the hub converts what goes out on the session stream
(results, starts, heartbeats); the journal keeps its files in the wire format (so a
daemon reads what an older one wrote) and converts as it reads and writes them.
Nothing else on the node touches ``types_pb2`` or ``node_pb2``.

Error handling: :func:`result_from_proto` raises ValueError for a status the node never
writes, and the ``*_from_bytes`` functions for bytes that are no such message (the
journal treats such a file as unreadable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

from google.protobuf.message import DecodeError

from node_agent.facts import Facts
from node_agent.local_models import LocalModel
from node_agent.models import Job, Metered, Repo, Resources, Result
from protos.contract import PROTOCOL, EndReason, ResultStatus
from protos.flota.v1 import node_pb2, types_pb2

__all__ = [
    "job_from_bytes",
    "job_from_proto",
    "job_to_bytes",
    "job_to_proto",
    "node_info",
    "node_jobs",
    "result_from_bytes",
    "result_from_proto",
    "result_to_bytes",
    "result_to_proto",
    "started",
]


def job_from_proto(spec: types_pb2.JobSpec) -> Job:
    repo = spec.repo
    res = spec.resources
    return Job(
        job_id=spec.job_id,
        run_id=spec.run_id,
        attempt_id=spec.attempt_id,
        agent=spec.agent,
        command=spec.command,
        prompt=spec.prompt,
        model=spec.model,
        repo=Repo(repo.url, repo.base_ref, repo.base_commit) if spec.HasField("repo") else None,
        branch=spec.branch,
        timeout_s=spec.timeout_s,
        env=dict(spec.env),
        resources=Resources(res.cpus, res.memory_mb, res.gpus) if spec.HasField("resources") else None,
        name=spec.name,
        resume_branches=tuple(spec.resume_branches),
        secrets=dict(spec.secrets),
        max_steps=spec.max_steps,
        budget_usd=spec.budget_usd,
        api_base=spec.api_base,
        check=spec.check,
        report_paths=dict(spec.report_paths),
        allow_empty=spec.allow_empty,
        merges=tuple(Repo(m.url, m.base_ref, m.base_commit) for m in spec.merges),
        ignore_paths=tuple(spec.ignore_paths),
        input=spec.input,
        input_path=spec.input_path,
    )


def _repo_pb(repo: Repo) -> types_pb2.RepoSpec:
    return types_pb2.RepoSpec(url=repo.url, base_ref=repo.base_ref, base_commit=repo.base_commit)


def job_to_proto(job: Job) -> types_pb2.JobSpec:
    spec = types_pb2.JobSpec(
        job_id=job.job_id,
        run_id=job.run_id,
        attempt_id=job.attempt_id,
        agent=job.agent,
        command=job.command,
        prompt=job.prompt,
        model=job.model,
        branch=job.branch,
        timeout_s=job.timeout_s,
        env=dict(job.env),
        name=job.name,
        resume_branches=list(job.resume_branches),
        secrets=dict(job.secrets),
        max_steps=job.max_steps,
        budget_usd=job.budget_usd,
        api_base=job.api_base,
        check=job.check,
        report_paths=dict(job.report_paths),
        allow_empty=job.allow_empty,
        merges=[_repo_pb(m) for m in job.merges],
        ignore_paths=list(job.ignore_paths),
        input=job.input,
        input_path=job.input_path,
    )
    if job.repo is not None:
        spec.repo.CopyFrom(_repo_pb(job.repo))
    if job.resources is not None:
        res = job.resources
        spec.resources.CopyFrom(types_pb2.Resources(cpus=res.cpus, memory_mb=res.memory_mb, gpus=res.gpus))
    return spec


# Fields that cross as they are; the others need a type of their own on each side.
_RESULT_SCALARS = tuple(
    f.name
    for f in fields(Result)
    if f.name not in ("status", "reason", "files_modified", "log_lines", "metered")
)
_METERED = tuple(f.name for f in fields(Metered) if f.name != "refusal")  # the refusal's line is the error's


def result_to_proto(result: Result) -> types_pb2.JobResult:
    m = result.metered
    return types_pb2.JobResult(
        **{name: getattr(result, name) for name in _RESULT_SCALARS},
        status=str(result.status),
        reason=str(result.reason),
        files_modified=list(result.files_modified),
        log_lines=list(result.log_lines),
        metered=None if m is None else types_pb2.MeterUsage(**{name: getattr(m, name) for name in _METERED}),
    )


def result_from_proto(result: types_pb2.JobResult) -> Result:
    return Result(
        **{name: getattr(result, name) for name in _RESULT_SCALARS},
        status=ResultStatus(result.status),
        reason=EndReason.read(result.reason),
        files_modified=tuple(result.files_modified),
        log_lines=tuple(result.log_lines),
        metered=(
            Metered(**{name: getattr(result.metered, name) for name in _METERED})
            if result.HasField("metered")
            else None
        ),
    )


def job_to_bytes(job: Job) -> bytes:
    return job_to_proto(job).SerializeToString()


def job_from_bytes(data: bytes) -> Job:
    try:
        return job_from_proto(types_pb2.JobSpec.FromString(data))
    except DecodeError as exc:
        raise ValueError(f"not a JobSpec: {exc}") from exc


def result_to_bytes(result: Result) -> bytes:
    return result_to_proto(result).SerializeToString()


def result_from_bytes(data: bytes) -> Result:
    try:
        return result_from_proto(types_pb2.JobResult.FromString(data))
    except DecodeError as exc:
        raise ValueError(f"not a JobResult: {exc}") from exc


def started(job_id: str, attempt_id: str, started_at: float) -> node_pb2.JobStarted:
    return node_pb2.JobStarted(job_id=job_id, attempt_id=attempt_id, started_at=started_at)


def node_jobs(running: Sequence[Job], finished: Sequence[Result]) -> list[node_pb2.NodeJob]:
    """ListJobs: what runs (secret values already blanked), then results not yet acknowledged."""
    out = [node_pb2.NodeJob(spec=job_to_proto(job), state="running") for job in running]
    out += [
        node_pb2.NodeJob(
            spec=types_pb2.JobSpec(job_id=r.job_id, attempt_id=r.attempt_id),
            state="finished",
            result=result_to_proto(r),
        )
        for r in finished
    ]
    return out


def node_info(
    *,
    node_id: str,
    name: str,
    version: str,
    build: str,
    network: str,
    network_source: str,
    labels: dict[str, str],
    slots: int,
    addresses: Sequence[str],
    running: int,
    unreachable_after_s: float,
    lost_after_s: float,
    facts: Facts,
    local_models: Sequence[LocalModel],
) -> types_pb2.NodeInfo:
    f = facts
    return types_pb2.NodeInfo(
        id=node_id,
        name=name,
        version=version,
        build=build,
        network=network,
        network_source=network_source,
        labels=labels,
        slots=slots,
        addresses=list(addresses),
        running=running,
        unreachable_after_s=unreachable_after_s,
        lost_after_s=lost_after_s,
        protocol=PROTOCOL,
        facts=types_pb2.Facts(
            cpu_count=f.cpu_count,
            load_1m=f.load_1m,
            memory_total_mb=f.memory_total_mb,
            memory_available_mb=f.memory_available_mb,
            gpus=[types_pb2.Gpu(name=g.name, memory_mb=g.memory_mb) for g in f.gpus],
            disk_free_mb=f.disk_free_mb,
            on_battery=f.on_battery,
            battery_percent=f.battery_percent,
            agent_clis=list(f.agent_clis),
            local_models=[
                types_pb2.LocalModel(model=m.model, api_base=m.api_base, slots=m.slots) for m in local_models
            ],
            os=f.os,
            arch=f.arch,
            hostname=f.hostname,
        ),
    )
