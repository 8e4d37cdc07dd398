"""The merge queue driven from the workstation: each merge and each fix is a job on the
fleet (placement, timeouts and the node's git like any job); this module only submits
them, waits for them and reads their results.

Error handling: a job that cannot be submitted or read raises CliError (one line); a
merge job that failed (it could not push, say) is CliError with its error.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from cli.client import EXIT_FAILED, Client, CliError
from cli.merge.queue import Entry, Outcome, fix_prefix, merged_branch, outcomes_of, queue_json
from protos.flota.v1 import coordinator_pb2

__all__ = ["FixSpec", "Merge", "run_merge"]


@dataclass(frozen=True)
class FixSpec:
    """--fix-with: who fixes an evicted branch, how many rounds, its server."""

    task: Callable[[str], coordinator_pb2.TaskSpec]  # prompt -> the fix job's task
    rounds: int
    api_base: str = ""


@dataclass
class Merge:
    """What the queue did: the outcomes by job, the fix jobs, the merged head."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    fixes: dict[str, coordinator_pb2.Job] = field(default_factory=dict)  # evicted job id -> fix job
    head: str = ""
    node: str = ""
    fix_jobs: list[coordinator_pb2.Job] = field(default_factory=list)  # every round's
    merge_jobs: list[coordinator_pb2.Job] = field(default_factory=list)


def _wait(client: Client, run: coordinator_pb2.Run, say: Callable[[str], None]) -> coordinator_pb2.Job:
    from cli.follow import follow_run

    final = follow_run(client, run, live=False, quiet=True)
    job = final.jobs[0]
    say(f"{job.id} {job.status}" + (f" on {job.node_name}" if job.node_name else ""))
    return job


def _submit(
    client: Client, repo: str, url: str, ref: str, task: coordinator_pb2.TaskSpec, **kw: object
) -> coordinator_pb2.Run:
    request = coordinator_pb2.SubmitRunRequest(tasks=[task], **kw)  # type: ignore[arg-type]
    request.repo.CopyFrom(coordinator_pb2.RepoRequest(path=repo, remote=url, ref=ref))
    return client.submit_run(request)


def _merge_job(  # noqa: PLR0913
    client: Client,
    run: coordinator_pb2.Run,
    repo: str,
    base: str,
    entries: list[Entry],
    check: str,
    timeout_s: float,
    say: Callable[[str], None],
    fixes: str = "",
) -> tuple[coordinator_pb2.Job, dict[str, object], list[Outcome]]:
    command = queue_json(run.repo_url, entries, check, merged_branch(run.id), timeout_s, fixes)
    task = coordinator_pb2.TaskSpec(
        agent="merge", command=command, name=f"merge queue of {run.id}", role="merge"
    )
    submitted = _submit(client, repo, run.repo_url, base, task, name=f"merge {run.id}", timeout_s=timeout_s)
    say(f"merge job {submitted.jobs[0].id}: {len(entries)} branch(es) onto {base[:12]}")
    job = _wait(client, submitted, say)
    try:
        report, outcomes = outcomes_of(job.result.answer)
    except ValueError:
        raise CliError(
            f"merge job {job.id} ended {job.status} without a report: "
            f"{job.result.error or job.result.log_tail[-300:]}",
            EXIT_FAILED,
        ) from None
    if report.get("status") != "success":
        raise CliError(f"merge job {job.id}: {report.get('error') or job.result.error}", EXIT_FAILED)
    return job, report, outcomes


def _git(repo: str, *args: str) -> str:
    proc = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=False)  # noqa: S603, S607
    if proc.returncode != 0:
        raise CliError(f"git {args[0]} in {repo}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return proc.stdout


def _fix_prompt(o: Outcome, check: str) -> str:
    if o.kind == "conflict":
        where = (
            "Your worktree is the integration branch with that branch merged in, its conflicts "
            "committed as they are (conflict markers in the files named above). Resolve them, "
            "keeping both sides' intent"
        )
    else:
        where = (
            "Your worktree is the integration branch with that branch merged in. Make the check "
            "pass, keeping the branch's change"
        )
    text = [f"The merge queue evicted branch {o.branch}.", f"Reason: {o.reason}"]
    if o.tail:
        text += ["The check's output (its end):", o.tail]
    text.append(where + (f"; `{check}` must pass." if check else "."))
    return "\n".join(text)


def _budget_left(run: coordinator_pb2.Run, spent_extra: float) -> float | None:
    """The run's budget (its jobs' budgets together) less what was spent; None: no budget."""
    budget = sum(j.budget_usd for j in run.jobs)
    if budget <= 0:
        return None
    return budget - sum(j.result.cost_usd for j in run.jobs) - spent_extra


def _fix_round(  # noqa: PLR0913
    client: Client,
    run: coordinator_pb2.Run,
    repo: str,
    state: Merge,
    fix: FixSpec,
    check: str,
    timeout_s: float,
    say: Callable[[str], None],
) -> bool:
    """One round: each evicted branch goes to the fixing agent, then its fix through the
    queue. False when nothing was left to fix or the budget is spent."""
    todo = [o for o in state.outcomes.values() if o.state == "evicted" and not o.fixed_by]
    if not todo:
        return False
    for o in todo:
        left = _budget_left(run, sum(f.result.cost_usd for f in state.fix_jobs))
        if left is not None and left <= 0:
            say("the run's budget is spent: no more fixes")
            return False
        if not o.fix_ref:
            continue  # the queue could not lay it out for a fix (say, it could not fetch it)
        _git(repo, "fetch", "--quiet", run.repo_url, f"refs/heads/{o.fix_ref}")
        task = fix.task(_fix_prompt(o, check))
        task.name = f"fix {o.job} ({o.kind})"
        task.role = "fix"
        submitted = _submit(
            client, repo, run.repo_url, o.fix_commit, task, name=f"fix {o.job} of {run.id}",
            budget_usd=left or 0.0, api_base=fix.api_base, check=check, timeout_s=timeout_s,
        )  # fmt: skip
        say(f"fix job {submitted.jobs[0].id} for {o.job}, from {o.fix_ref}")
        fixed = _wait(client, submitted, say)
        state.fixes[o.job] = fixed
        state.fix_jobs.append(fixed)
        if fixed.status != "success" or not fixed.result.branch:
            ended = f"ended {fixed.status}" if fixed.status != "success" else "changed nothing"
            o.reason = f"{o.reason.split('; the fix ')[0]}; the fix {fixed.id} {ended}"
            o.fix_ref = ""
            continue
        entry = Entry(fixed, f"refs/heads/{fixed.result.branch}", fixed.result.head_commit)
        prefix = fix_prefix(run.id, len(state.fix_jobs))
        job, report, (second,) = _merge_job(
            client, run, repo, state.head, [entry], check, timeout_s, say, prefix
        )
        state.merge_jobs.append(job)
        state.head = str(report["head"])
        if second.state == "merged":
            o.fixed_by = fixed.id
            state.outcomes[fixed.id] = second
        else:  # the fix's own merge, laid out for the next round
            o.kind, o.reason, o.tail = second.kind, f"after the fix {fixed.id}: {second.reason}", second.tail
            o.fix_ref, o.fix_commit = second.fix_ref, second.fix_commit
    return True


def run_merge(  # noqa: PLR0913
    client: Client,
    run: coordinator_pb2.Run,
    repo: str,
    entries: list[Entry],
    check: str,
    fix: FixSpec | None,
    timeout_s: float,
    say: Callable[[str], None],
) -> Merge:
    """The queue: one merge job over every entry, then --fix-with's rounds."""
    fixes = fix_prefix(run.id, 0) if fix and fix.rounds else ""
    job, report, outcomes = _merge_job(
        client, run, repo, run.base_commit, entries, check, timeout_s, say, fixes
    )
    state = Merge(
        {o.job: o for o in outcomes}, head=str(report["head"]), node=job.node_name, merge_jobs=[job]
    )
    for o in outcomes:
        say(f"{o.branch}: {o.state}" + (f" ({o.reason})" if o.reason else ""))
    rounds = fix.rounds if fix else 0
    for n in range(rounds):
        assert fix is not None
        say(f"fix round {n + 1} of {rounds}")
        if not _fix_round(client, run, repo, state, fix, check, timeout_s, say):
            break
    return state
