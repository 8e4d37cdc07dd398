"""Proto <-> model conversions: the only place both kinds of type meet.

The scheduler, outcomes, fleet and models never see a protobuf message: what nodes say
is decoded here as it arrives (`event_from_pb`), what they are sent is encoded here
(`spec_to_pb`), and the API's replies are built here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields

from coordinator.fleet import NodeEntry
from coordinator.models import (
    Attempt,
    EndReason,
    Facts,
    Finished,
    Gpu,
    Heartbeat,
    Job,
    LocalModel,
    LogLines,
    Metered,
    NodeEvent,
    NodeInfo,
    NodeJob,
    Pruning,
    Result,
    Run,
    Started,
    shown_status,
)
from protos.flota.v1 import coordinator_pb2, node_pb2, types_pb2
from protos.limits import MAX_FULL_RUN_JOBS

__all__ = [
    "attempt_to_pb",
    "brief_job_to_pb",
    "event_from_pb",
    "job_to_pb",
    "node_info_from_pb",
    "node_info_to_pb",
    "node_job_from_pb",
    "node_status_to_pb",
    "pruning_to_pb",
    "result_from_pb",
    "result_to_pb",
    "run_to_pb",
    "spec_to_pb",
]

_RESULT_FIELDS = tuple(f.name for f in fields(Result) if f.name != "metered")
_METERED_FIELDS = tuple(f.name for f in fields(Metered))
_FACT_SCALARS = tuple(f.name for f in fields(Facts) if f.name not in ("gpus", "agent_clis", "local_models"))
_INFO_SCALARS = tuple(f.name for f in fields(NodeInfo) if f.name not in ("labels", "facts", "addresses"))


def result_from_pb(msg: types_pb2.JobResult) -> Result:
    values = {name: getattr(msg, name) for name in _RESULT_FIELDS}
    values["files_modified"] = tuple(msg.files_modified)
    values["reason"] = EndReason.read(msg.reason)
    if msg.HasField("metered"):  # the proxy's count over the agent's own word
        m = Metered(**{name: getattr(msg.metered, name) for name in _METERED_FIELDS})
        values.update(metered=m, tokens_in=m.tokens_in, tokens_out=m.tokens_out, cost_usd=m.cost_usd)
    return Result(**values)


def node_info_from_pb(msg: types_pb2.NodeInfo) -> NodeInfo:
    f = msg.facts
    facts = Facts(
        **{name: getattr(f, name) for name in _FACT_SCALARS},
        gpus=tuple(Gpu(g.name, g.memory_mb) for g in f.gpus),
        agent_clis=tuple(f.agent_clis),
        local_models=tuple(LocalModel(m.model, m.api_base, m.slots) for m in f.local_models),
    )
    return NodeInfo(
        **{name: getattr(msg, name) for name in _INFO_SCALARS},
        labels=dict(msg.labels),
        facts=facts,
        addresses=tuple(msg.addresses),
    )


def node_info_to_pb(info: NodeInfo) -> types_pb2.NodeInfo:
    f = info.facts
    facts = types_pb2.Facts(
        **{name: getattr(f, name) for name in _FACT_SCALARS},
        gpus=[types_pb2.Gpu(name=g.name, memory_mb=g.memory_mb) for g in f.gpus],
        agent_clis=list(f.agent_clis),
        local_models=[
            types_pb2.LocalModel(model=m.model, api_base=m.api_base, slots=m.slots) for m in f.local_models
        ],
    )
    return types_pb2.NodeInfo(
        **{name: getattr(info, name) for name in _INFO_SCALARS},
        labels=dict(info.labels),
        facts=facts,
        addresses=list(info.addresses),
    )


def event_from_pb(event: node_pb2.NodeEvent) -> NodeEvent | None:
    """A session event as the core sees it; None for a kind this coordinator does not know."""
    kind = event.WhichOneof("kind")
    if kind == "heartbeat":
        return Heartbeat(node_info_from_pb(event.heartbeat))
    if kind == "started":
        return Started(event.started.attempt_id, event.started.started_at)
    if kind == "log":
        return LogLines(event.log.attempt_id, tuple(event.log.lines))
    if kind == "result":
        return Finished(event.result.attempt_id, result_from_pb(event.result), tuple(event.result.log_lines))
    return None


def node_job_from_pb(job: node_pb2.NodeJob) -> NodeJob:
    if job.state != "finished":
        return NodeJob(job.spec.attempt_id)
    result = job.result
    return NodeJob(
        job.spec.attempt_id, Finished(job.spec.attempt_id, result_from_pb(result), tuple(result.log_lines))
    )


def spec_to_pb(
    job: Job, attempt: Attempt, secrets: Mapping[str, str], resume_branches: Sequence[str]
) -> types_pb2.JobSpec:
    """What the node is sent to run one attempt."""
    spec = types_pb2.JobSpec(
        job_id=job.id,
        run_id=job.run_id,
        attempt_id=attempt.id,
        agent=job.agent,
        command=job.command,
        prompt=job.prompt,
        model=job.model,
        branch=attempt.branch,
        timeout_s=job.timeout_s,
        env=dict(job.env),
        name=job.name,
        resources=types_pb2.Resources(
            cpus=job.placement.cpus, memory_mb=job.placement.memory_mb, gpus=job.placement.gpus
        ),
        max_steps=job.max_steps,
        budget_usd=job.budget_usd,
        api_base=job.api_base,
        check=job.check,
        report_paths=dict(job.report_paths),
        allow_empty=job.allow_empty,
        ignore_paths=list(job.ignore_paths),
        secrets=dict(secrets),
        resume_branches=list(resume_branches),
        input=job.input,
        input_path=job.input_path,
    )
    if job.repo:
        # A job of a graph starts from its dependencies' results (outcomes.released).
        (ref, commit), *merges = job.bases or [(job.repo.base_ref, job.repo.base_commit)]
        spec.repo.CopyFrom(types_pb2.RepoSpec(url=job.repo.url, base_ref=ref, base_commit=commit))
        spec.merges.extend(types_pb2.RepoSpec(url=job.repo.url, base_ref=r, base_commit=c) for r, c in merges)
    return spec


def node_status_to_pb(
    entry: NodeEntry, address: str, error: str, link: str = ""
) -> coordinator_pb2.NodeStatus:
    status = coordinator_pb2.NodeStatus(
        state=entry.shown_state,
        address=address,
        last_seen=entry.last_seen_wall,
        error=error,
        refused=entry.refused,
        link=link,
    )
    if entry.info is not None:
        status.info.CopyFrom(node_info_to_pb(entry.info))
        status.info.running = len(entry.reservations)
    # Who a node is comes from its enrollment, not from what it says about itself.
    status.info.id, status.info.name = entry.id, entry.name
    return status


def result_to_pb(result: Result, job_id: str = "", attempt_id: str = "") -> types_pb2.JobResult:
    values = {name: getattr(result, name) for name in _RESULT_FIELDS}
    values["files_modified"] = list(result.files_modified)
    m = result.metered
    if m is not None:
        values["metered"] = types_pb2.MeterUsage(**{name: getattr(m, name) for name in _METERED_FIELDS})
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


def job_to_pb(job: Job, node_names: dict[str, str], with_input: bool = False) -> coordinator_pb2.Job:
    """A job for a reply; its input text only `with_input` (BatchResults: thousands of
    them would not fit in one run's reply)."""
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
        timeout_s=job.timeout_s,
        depends_on=list(job.depends_on),
        role=job.role,
        input=job.input if with_input else "",
        input_path=job.input_path,
    )
    if job.result is not None:
        last = job.attempts[-1].id if job.attempts else ""
        msg.result.CopyFrom(result_to_pb(job.result, job.id, last))
    return msg


def brief_job_to_pb(job: Job) -> coordinator_pb2.Job:
    """A job as a batch's SubmitRun reply (SubmitRunRequest.brief), and any reply with a
    run of more than MAX_FULL_RUN_JOBS jobs, lists it."""
    return coordinator_pb2.Job(
        id=job.id, run_id=job.run_id, name=job.name, status=job.status, wait_reason=job.wait_reason
    )


def run_to_pb(
    run: Run, node_names: dict[str, str], with_jobs: bool = True, brief: bool = False
) -> coordinator_pb2.Run:
    if brief or (with_jobs and len(run.jobs) > MAX_FULL_RUN_JOBS):
        jobs = [brief_job_to_pb(j) for j in run.jobs]
    else:
        jobs = [job_to_pb(j, node_names) for j in run.jobs] if with_jobs else []
    msg = coordinator_pb2.Run(
        id=run.id,
        name=run.name,
        status=shown_status(run),
        created_at=run.created_at,
        finished_at=run.finished_at,
        repo_url=run.repo_url,
        base_commit=run.base_commit,
        jobs=jobs,
        reason=run.reason,
    )
    if run.budget_usd:
        msg.budget.CopyFrom(coordinator_pb2.BatchBudget(limit_usd=run.budget_usd, spent_usd=run.spent_usd))
    return msg


def pruning_to_pb(out: Pruning, node_names: dict[str, str]) -> coordinator_pb2.PruneReply:
    def names(ids: list[str]) -> list[str]:
        return [node_names.get(node_id, node_id) for node_id in ids]

    return coordinator_pb2.PruneReply(
        dry_run=out.dry_run,
        older_than_s=out.older_than_s,
        runs=[
            coordinator_pb2.PrunedRun(
                id=item.run.id,
                name=item.run.name,
                status=item.run.status,
                finished_at=item.run.finished_at,
                jobs=len(item.run.jobs),
                repo_url=item.run.repo_url,
                nodes=names(item.nodes),
                refs=len(item.refs),
                forgotten=item.forgotten,
                kept=item.kept,
            )
            for item in out.runs
        ],
        remotes=[
            coordinator_pb2.RemoteRefs(url=r.url, refs=r.refs, removed=r.removed, error=r.error)
            for r in out.remotes
        ],
        worktrees_removed=out.worktrees_removed,
        node_refs_removed=out.node_refs_removed,
        nodes_unreachable=names(out.nodes_unreachable),
    )
