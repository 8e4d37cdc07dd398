"""**Pure**: which branches of a run the merge queue takes, in which order; the queue a
merge job is given; its report read back; the pull request's description.

A run's jobs are taken in dependency order (:func:`dependencies` reads a job's
``depends_on``; a run that is no graph keeps its job order). Jobs of one task on several
models are a competition: only its winner goes in, the job picked (``flota pick`` or
``--pick``), else the first of ``flota compare``'s ranking.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cli.render import compare_rows
from protos.flota.v1 import coordinator_pb2

__all__ = [
    "Entry",
    "Outcome",
    "competition_key",
    "dependencies",
    "fix_prefix",
    "description",
    "merged_branch",
    "outcomes_of",
    "queue_json",
    "select",
]


@dataclass(frozen=True)
class Entry:
    """A branch the queue takes: the job it is the result of."""

    job: coordinator_pb2.Job
    ref: str
    commit: str


@dataclass
class Outcome:
    """What the queue did with one branch (a fix job's second chance included)."""

    job: str
    branch: str
    state: str  # merged | evicted
    kind: str = ""  # conflict | check | fetch
    reason: str = ""
    tail: str = ""
    check: str = ""
    fix_ref: str = ""  # the branch a fix starts from (this one merged onto the final head)
    fix_commit: str = ""
    fixed_by: str = ""  # the fix job whose branch was merged in its place
    extra: dict[str, Any] = field(default_factory=dict)


def merged_branch(run_id: str) -> str:
    return f"flota/{run_id}/merged"


def dependencies(job: coordinator_pb2.Job) -> list[str]:
    """The ids (or task names) a job waits on: the graph's field (empty for a flat run)."""
    return list(job.depends_on)


def competition_key(job: coordinator_pb2.Job) -> tuple[str, ...]:
    """Jobs of the same task (same agent, command or prompt, role and dependencies) on
    different models compete (their names carry the model, so names are no part of it)."""
    return (job.agent, job.command, job.prompt, job.role, *dependencies(job))


def _order(jobs: Sequence[coordinator_pb2.Job]) -> list[coordinator_pb2.Job]:
    """Dependencies first (a stable topological order; job order breaks ties)."""
    known = {j.id: j for j in jobs}
    by_name = {j.name: j.id for j in jobs if j.name}
    done: list[str] = []
    seen: set[str] = set()

    def visit(jid: str, path: frozenset[str]) -> None:
        if jid in seen or jid in path:
            return
        for dep in dependencies(known[jid]):
            dep_id = dep if dep in known else by_name.get(dep, "")
            if dep_id:
                visit(dep_id, path | {jid})
        seen.add(jid)
        done.append(jid)

    for j in jobs:
        visit(j.id, frozenset())
    return [known[i] for i in done]


def select(run: coordinator_pb2.Run, picks: Sequence[str] = ()) -> tuple[list[Entry], list[str]]:
    """The branches to merge, in order, and a line for each job left out (and why).

    A pick names a job id; a pick that is not a job of the run is the caller's error."""
    jobs = list(run.jobs)
    groups: dict[tuple[str, ...], list[coordinator_pb2.Job]] = {}
    for j in jobs:
        groups.setdefault(competition_key(j), []).append(j)
    skipped: list[str] = []
    chosen: set[str] = set()
    for group in groups.values():
        if len(group) == 1 or not any(j.model for j in group):
            chosen.update(j.id for j in group)
            continue
        ids = {j.id for j in group}
        picked = [p for p in picks if p in ids]
        if picked:
            winner = picked[-1]
            why = "picked"
        else:
            sub = coordinator_pb2.Run()
            sub.jobs.extend(group)
            ranked = [r for r in compare_rows(sub) if r["status"] == "success" and r["branch"]]
            winner = ranked[0]["job"] if ranked else ""
            why = "ranked first by flota compare"
        chosen.add(winner)
        for j in group:
            if j.id != winner:
                skipped.append(f"{j.id} ({j.model}): a competitor; {winner or 'none'} {why}")
    entries: list[Entry] = []
    for j in _order(jobs):
        if j.id not in chosen:
            continue
        r = j.result
        if j.status != "success" or not r.branch or not r.head_commit:
            reason = "it pushed no branch (no changes)" if j.status == "success" else f"it ended {j.status}"
            skipped.append(f"{j.id}: not merged, {reason}")
            continue
        entries.append(Entry(j, f"refs/heads/{r.branch}", r.head_commit))
    return entries, skipped


def fix_prefix(run_id: str, round_: int) -> str:
    """Where the queue leaves each evicted branch (``<prefix>/<job>``) merged onto the
    integration branch, its conflicts committed as they are, for a fixing agent to start from."""
    return f"flota/{run_id}/fix/{round_}"


def queue_json(  # noqa: PLR0913
    url: str, entries: Sequence[Entry], check: str, push: str, check_timeout_s: float = 0, fixes: str = ""
) -> str:
    """The merge job's command: its queue, as MergeAgent's process reads it. ``fixes``: a
    branch prefix; each evicted branch is then merged onto the final head, conflicts and
    all, and pushed under it for --fix-with."""
    return json.dumps(
        {
            "url": url,
            "check": check,
            "check_timeout_s": check_timeout_s,
            "push": push,
            "fixes": fixes,
            "branches": [{"job": e.job.id, "ref": e.ref, "commit": e.commit} for e in entries],
        }
    )


def outcomes_of(answer: str) -> tuple[dict[str, Any], list[Outcome]]:
    """The merge job's report (its answer) and one Outcome per branch; ValueError if none."""
    data = json.loads(answer)
    if not isinstance(data, dict) or not isinstance(data.get("outcomes"), list):
        raise ValueError("the merge job's report has no outcomes")
    known = {"job", "branch", "state", "kind", "reason", "tail", "check", "fix_ref", "fix_commit"}
    out = [
        Outcome(
            **{k: str(o.get(k, "")) for k in known},
            extra={k: v for k, v in o.items() if k not in known},
        )
        for o in data["outcomes"]
        if isinstance(o, dict)
    ]
    return data, out


def _evicted(job_id: str, o: Outcome) -> str:
    line = f"- `{job_id}` ({o.branch}): {o.kind}: {o.reason}"
    if o.fixed_by:
        line += f"; fixed by `{o.fixed_by}`"
    if o.tail:
        line += "\n\n  ```\n  " + o.tail.replace("\n", "\n  ") + "\n  ```"
    return line


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") or "-"


def description(  # noqa: PLR0913
    run: coordinator_pb2.Run,
    entries: Sequence[Entry],
    outcomes: Mapping[str, Outcome],
    skipped: Sequence[str],
    fixes: Mapping[str, coordinator_pb2.Job],
    branch: str,
    head: str,
    check: str,
    merge_node: str,
) -> str:
    """The pull request's description (markdown): per task what it did and what became of it."""
    title = run.name or run.id
    lines = [
        f"# flota: {title}",
        "",
        f"Run `{run.id}` merged into `{branch}` at `{head[:12]}` by a merge queue on node "
        f"`{merge_node or '-'}`" + (f", with the check `{check}` after each merge." if check else "."),
        "",
        "| task | role | branch | head | node | agent | model | steps | tokens | cost | duration "
        "| check | outcome |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [(e.job, outcomes.get(e.job.id)) for e in entries]
    rows += [(fix, outcomes.get(fix.id)) for fix in fixes.values()]
    evicted: list[str] = []
    for job, o in rows:
        r = job.result
        state = o.state if o else "not reached"
        if o and o.fixed_by:
            state += f", fixed by {o.fixed_by}"
        if o and o.state == "evicted":
            evicted.append(_evicted(job.id, o))
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    f"`{job.id}` {(job.name or job.command or job.prompt)[:60]}",
                    job.role or ("fix" if job.id in {f.id for f in fixes.values()} else "-"),
                    f"`{r.branch}`",
                    f"`{r.head_commit[:12]}`",
                    job.node_name,
                    job.agent or "shell",
                    job.model,
                    r.steps,
                    r.tokens_in + r.tokens_out,
                    f"${r.cost_usd:.4f}",
                    f"{r.duration_s:.1f}s",
                    (o.check if o and o.check else r.check),
                    state,
                )
            )
            + " |"
        )
    total = sum(j.result.cost_usd for j, _ in rows)
    lines += ["", f"Total cost: ${total:.4f}."]
    if evicted:
        lines += ["", "## Evicted", "", *evicted]
    if skipped:
        lines += ["", "## Not taken", "", *[f"- {s}" for s in skipped]]
    return "\n".join(lines) + "\n"
