"""`flota run|status|results|compare|logs|cancel|retry|cleanup|prune`: runs, their jobs and their results."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Lock
from typing import Annotated

import typer

from cli.client import EXIT_FAILED, Client, CliError
from cli.options import options
from cli.render import (
    NO_CHANGES,
    ProgressLines,
    compare_rows,
    compare_table,
    console,
    count,
    jobs_table,
    metered_line,
    no_changes,
    print_json,
    prune_lines,
    results_table,
    runs_table,
    to_dict,
)
from cli.results import full_jobs, waiting_lines
from protos.flota.v1 import coordinator_pb2, types_pb2

__all__ = ["cancel", "cleanup", "compare", "logs", "prune", "results", "retry", "run", "status"]


def _parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"invalid {what} {item!r} (expected KEY=VALUE)")
        pairs[key] = value
    return pairs


def run(
    ctx: typer.Context,
    command: Annotated[
        str | None,
        typer.Argument(help="A task: a shell command, or a prompt for an agent (or use --task, repeatable)."),
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option("--task", "-t", help="A task (command or prompt); repeatable.")
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            help="shell (default), llm, or an agent CLI: claude, aider, codex, gemini, architect, ..."
        ),
    ] = None,
    model: Annotated[list[str] | None, typer.Option(help="A model (litellm string); repeatable.")] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models: one job per model, on different machines.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Jobs to run; tasks and models are dealt round-robin.")
    ] = None,
    budget_per_worker: Annotated[
        float | None, typer.Option(help="USD budget of each job, kept by a metering proxy on its node.")
    ] = None,
    budget: Annotated[float | None, typer.Option(help="USD for the whole run, all its jobs.")] = None,
    each: Annotated[str | None, typer.Option(metavar="GLOB", help="One job per file matching GLOB.")] = None,
    inputs: Annotated[
        str | None, typer.Option(metavar="FILE|-", help="One job per line (.jsonl: per JSON object).")
    ] = None,
    jsonl: Annotated[bool, typer.Option(help="--inputs are JSON objects, one a line ({field}).")] = False,
    max_steps: Annotated[
        int | None,
        typer.Option(help="Model calls (steps) allowed per job: llm, or an agent CLI that has a limit."),
    ] = None,
    check: Annotated[
        str | None, typer.Option(help="A command run in the worktree after the agent; pass/fail is recorded.")
    ] = None,
    api_base: Annotated[
        str | None,
        typer.Option(help="The model server (http://host:port/v1) for the llm agent or an agent CLI."),
    ] = None,
    repo: Annotated[str | None, typer.Option(help="Git repository the tasks work on.")] = None,
    remote: Annotated[str, typer.Option(help="Remote name or URL the nodes use.")] = "origin",
    ref: Annotated[str, typer.Option(help="Base revision.")] = "HEAD",
    from_working_tree: Annotated[
        bool,
        typer.Option(
            help="Base on the working tree: uncommitted changes and untracked files not in .gitignore."
        ),
    ] = False,
    on: Annotated[str | None, typer.Option("--on", help="Pin to a node (name or id).")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Required node label KEY=VALUE; repeatable.")
    ] = None,
    network: Annotated[list[str] | None, typer.Option(help="Allowed network profile; repeatable.")] = None,
    avoid_network: Annotated[
        list[str] | None, typer.Option(help="Network profile to avoid; repeatable.")
    ] = None,
    exclusive: Annotated[bool, typer.Option(help="Nothing else runs on the node meanwhile.")] = False,
    spread: Annotated[
        bool, typer.Option(help="At most one of this run's tasks on a node at a time (hard).")
    ] = False,
    cpus: Annotated[float, typer.Option(help="CPUs each task needs.")] = 0,
    memory: Annotated[int, typer.Option(help="Memory each task needs, MB.")] = 0,
    gpus: Annotated[int, typer.Option(help="GPUs each task needs.")] = 0,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", "--timeout-per-worker", help="Seconds before a task is stopped (0: none)."),
    ] = None,
    retries: Annotated[
        int,
        typer.Option(
            help="Extra attempts when a node is lost, stops a task cut off, or its own model server is "
            "down; never for an agent's own limits (default 1; -1: the default)."
        ),
    ] = -1,
    resume_from_partial: Annotated[
        bool, typer.Option(help="A retry starts from the work an earlier attempt pushed.")
    ] = False,
    allow_empty: Annotated[
        bool,
        typer.Option(
            help="With --repo: a job that changed nothing still pushes its branch (an empty commit)."
        ),
    ] = False,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the tasks; repeatable.")] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME of a secret (flota secret set, or the coordinator's environment) for the tasks' "
            "environment; redacted from logs and results. Repeatable."
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="A name for the run.")] = "",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Show progress, then the results.")] = False,
    plan: Annotated[
        Path | None,
        typer.Option(help="A plan file (flota plan): its tasks run as a graph, each after its dependencies."),
    ] = None,
) -> None:
    """Run tasks on the fleet, each on its own branch when --repo is given."""
    o = options(ctx)
    texts = ([command] if command else []) + list(task or [])
    if plan is not None and (texts or agent or model or models or workers):
        raise CliError("a plan (--plan) names its own tasks, agents and models: give them in the plan file")
    if not texts and plan is None:
        raise CliError("nothing to run: give a command or --task")
    from cli.agents import TEMPLATES, fan_out, load_repo_config, takes

    config = load_repo_config(Path(repo or ".").resolve())
    defaults = config.run
    agent = agent or defaults.get("agent") or "shell"
    model_list = list(model or []) + [m.strip() for m in (models or "").split(",") if m.strip()]
    model_list = model_list or list(defaults.get("models", []))
    if workers is None:
        workers = int(defaults.get("workers", 0))
    if workers < 0 or workers > 1000:
        raise CliError("--workers must be between 1 and 1000")
    network = network or list(defaults.get("networks", []))
    timeout = timeout if timeout is not None else float(defaults.get("timeout_per_worker", 0))
    if budget is not None and not budget > 0:
        raise CliError("--budget is a positive number of USD for the whole run")
    templates = {**TEMPLATES, **config.agents}
    if max_steps is None:  # flota.yaml's default, for the agents that take one
        max_steps = int(defaults.get("max_steps", 0)) if takes(agent, templates, "max_steps") else 0
    batch = each is not None or inputs is not None or jsonl
    if plan is not None:
        if batch:
            raise CliError("--plan runs the plan's tasks: it takes no --each, --inputs or --jsonl")
        from cli.plan.files import graph_run

        tasks, plan_budget, plan_check = graph_run(plan, repo, templates)
        budget_per_worker = plan_budget if budget_per_worker is None else budget_per_worker
        check = plan_check if check is None else check
    elif batch:
        from cli.batch import batch_inputs, batch_tasks, check_size

        items = batch_inputs(texts, workers, each, inputs, jsonl, repo, ref, from_working_tree)
        tasks = batch_tasks(agent, texts[0], items, model_list, templates, api_base or "", max_steps)
    else:
        metered = bool(budget_per_worker or defaults.get("budget_per_worker", 0))
        tasks = fan_out(agent, texts, model_list, workers, templates, api_base or "", max_steps, metered)
    request = coordinator_pb2.SubmitRunRequest(
        tasks=tasks,
        max_steps=max_steps,
        budget_usd=budget_per_worker
        if budget_per_worker is not None
        else float(defaults.get("budget_per_worker", 0)),
        check=check if check is not None else str(defaults.get("check", "")),
        api_base=api_base or "",
        placement=coordinator_pb2.PlacementSpec(
            node=on or "",
            labels=_parse_pairs(label, "label"),
            networks=network or [],
            avoid_networks=avoid_network or [],
            exclusive=exclusive,
            spread=spread,
            resources=types_pb2.Resources(cpus=cpus, memory_mb=memory, gpus=gpus),
        ),
        timeout_s=timeout,
        retries=retries,
        resume_from_partial=resume_from_partial,
        allow_empty=allow_empty,
        secrets=secret or [],
        name=name,
        env=_parse_pairs(env, "environment variable"),
        run_budget_usd=budget or 0.0,
        brief=batch,
    )
    if repo:
        path = os.path.abspath(repo)
        if not os.path.isdir(path):
            raise CliError(f"no such directory: {repo}")
        request.repo.CopyFrom(
            coordinator_pb2.RepoRequest(
                path=path, remote=remote, ref=ref, from_working_tree=from_working_tree
            )
        )
    if batch:
        check_size(request, len(items))
    client = o.client()
    submitted = client.submit_run(request)
    if not follow:
        if o.json:
            print_json(to_dict(submitted))
        else:
            queued = count(len(submitted.jobs), "job")
            console.print(f"run {submitted.id}: {queued} queued (see: flota status {submitted.id})")
            # The coordinator tried each job against the fleet as it is: say which cannot run yet.
            waiting = [j for j in submitted.jobs if j.wait_reason and j.wait_reason != "waiting for a node"]
            for line in waiting_lines(waiting, batch):
                console.print(line, markup=False, highlight=False)
        return
    _follow(client, submitted, o.json, "was submitted")


def _follow(client: Client, run_msg: coordinator_pb2.Run, as_json: bool, done: str) -> None:
    """Watch a run until it ends, then print its results; exit 1 unless it succeeded."""
    from cli.follow import follow_run

    if not as_json:
        jobs = count(len(run_msg.jobs), "job")
        console.print(f"run {run_msg.id}: {jobs} (Ctrl-C stops watching, not the run)")
    try:
        final = follow_run(client, run_msg, live=not as_json and console.is_terminal, quiet=as_json)
    except KeyboardInterrupt:
        print(
            f"flota: stopped watching; run {run_msg.id} goes on (flota status {run_msg.id}, "
            f"flota cancel {run_msg.id})",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    except CliError as exc:
        raise CliError(f"{exc}; run {run_msg.id} {done} (flota status {run_msg.id})", exc.code) from None
    final = full_jobs(client, final)
    if as_json:
        print_json(to_dict(final))
    else:
        console.print(results_table(final))
    if final.status != "success":
        raise typer.Exit(EXIT_FAILED)


def status(
    ctx: typer.Context,
    ident: Annotated[
        str | None, typer.Argument(metavar="RUN|JOB", help="A run or job id; none: recent runs.")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many recent runs to list.")] = 20,
) -> None:
    """Show recent runs, one run and its jobs, or one job and its attempts."""
    o = options(ctx)
    client = o.client()
    if ident is None:
        runs = client.list_runs(limit).runs
        if o.json:
            print_json([to_dict(r) for r in runs])
        else:
            console.print(runs_table(list(runs)) if runs else "no runs yet")
        return
    if "." in ident:
        job = client.get_job(ident)
        if o.json:
            print_json(to_dict(job))
            return
        unchanged = job.status == "success" and no_changes(job)
        console.print(f"job {job.id}  {job.status}{f' ({NO_CHANGES})' if unchanged else ''}  {job.name}")
        if job.wait_reason and job.status in ("queued", "waiting"):
            console.print(f"waiting: {job.wait_reason}")
        if job.result.HasField("metered"):
            console.print(metered_line(job.result.metered))
        for a in job.attempts:
            # The winning attempt of a job that changed nothing pushed no branch (unless asked).
            branch = NO_CHANGES if unchanged and a.status == "success" and not job.branch else a.branch
            console.print(
                f"  attempt {a.number} on {a.node_name or a.node_id}: {a.status} {branch} {a.error}"
            )
        return
    run_msg = client.get_run(ident)
    if o.json:
        print_json(to_dict(run_msg))
        return
    console.print(f"run {run_msg.id}  {run_msg.status}")
    console.print(jobs_table(run_msg))


def results(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    fmt: Annotated[
        str | None, typer.Option("--format", metavar="jsonl|csv|md", help="Rows, one a job.")
    ] = None,
    output: Annotated[str | None, typer.Option(metavar="FILE", help="Write the rows to FILE.")] = None,
) -> None:
    """The results of a run: node, branch, status, duration, files modified."""
    o = options(ctx)
    if fmt is not None or output is not None:
        from cli.results import write_rows

        if not write_rows(o.client().batch_results(run_id), fmt or "jsonl", output, sys.stdout):
            raise typer.Exit(EXIT_FAILED)
        return
    client = o.client()
    run_msg = full_jobs(client, client.get_run(run_id))
    if o.json:
        print_json([{"job": j.id, "node": j.node_name, **to_dict(j.result)} for j in run_msg.jobs])
    else:
        console.print(results_table(run_msg))
    if run_msg.status != "success":
        raise typer.Exit(EXIT_FAILED)


def compare(ctx: typer.Context, run_id: Annotated[str, typer.Argument(metavar="RUN")]) -> None:
    """Rank a run's jobs as a competition: check, status, cost, duration, diff size."""
    o = options(ctx)
    rows = compare_rows(o.client().get_run(run_id))
    if o.json:
        print_json(rows)
    else:
        console.print(compare_table(rows))


def logs(
    ctx: typer.Context,
    ident: Annotated[str, typer.Argument(metavar="JOB|RUN", help="A job, or a run: every job's output.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print a job's output (all attempts); for a run, every job's, each line prefixed with its job."""
    o = options(ctx)
    client = o.client()
    if "." in ident:
        _print_logs(client, ident, follow, o.json, prefix=False, lock=threading.Lock())
        return
    job_ids = [j.id for j in client.get_run(ident).jobs]
    lock = threading.Lock()
    if not follow:
        for job_id in job_ids:
            _print_logs(client, job_id, False, o.json, prefix=True, lock=lock)
        return
    # Followed, the jobs run at once: one stream each (gRPC multiplexes them on one channel),
    # lines printed whole, in the order they come.
    with ThreadPoolExecutor(max_workers=max(len(job_ids), 1)) as pool:
        futures = [pool.submit(_print_logs, client, j, True, o.json, True, lock) for j in job_ids]
        for future in futures:
            future.result()


def _print_logs(client: Client, job_id: str, follow: bool, as_json: bool, prefix: bool, lock: Lock) -> None:
    attempt = ""
    lead = f"{job_id} | " if prefix else ""
    for chunk in client.stream_logs(job_id, follow):
        with lock:
            if as_json:
                for line in chunk.lines:
                    item = {"job": job_id} if prefix else {}
                    print(json.dumps({**item, "attempt_id": chunk.attempt_id, "line": line}), flush=True)
                continue
            if attempt and chunk.attempt_id != attempt:  # a retry: say where the next try starts
                sys.stderr.write(f"{lead}--- {chunk.attempt_id} ---\n")
            attempt = chunk.attempt_id
            sys.stdout.write("".join(lead + line + "\n" for line in chunk.lines))
            sys.stdout.flush()


def cancel(ctx: typer.Context, ident: Annotated[str, typer.Argument(metavar="RUN|JOB")]) -> None:
    """Cancel a run or one job: its processes get SIGTERM, then SIGKILL."""
    o = options(ctx)
    reply = o.client().cancel(ident)
    if o.json:
        print_json(to_dict(reply))
    else:
        if reply.cancelled:
            console.print(f"cancelled {count(len(reply.cancelled), 'job')}: {' '.join(reply.cancelled)}")
        else:
            console.print("nothing to cancel: it has already ended")


def retry(
    ctx: typer.Context,
    ident: Annotated[str, typer.Argument(metavar="JOB|RUN", help="A job, or a run: every job of it.")],
    failed: Annotated[
        bool, typer.Option("--failed", help="Only the jobs whose final status is not success.")
    ] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Show progress, then the results.")] = False,
) -> None:
    """Run a job, or a run's jobs, again: new attempts of the same jobs, with the same spec."""
    o = options(ctx)
    client = o.client()
    reply = client.retry(ident, failed)
    if follow:
        _follow(client, reply.run, o.json, "is running again")
    elif o.json:
        print_json(to_dict(reply))
    else:
        jobs = f"{count(len(reply.retried), 'job')}: {' '.join(reply.retried)}"
        console.print(f"run {reply.run.id}: {jobs} queued again (see: flota status {reply.run.id})")


def cleanup(ctx: typer.Context, run_id: Annotated[str, typer.Argument(metavar="RUN")]) -> None:
    """Remove a run's worktrees on the nodes. Result branches are kept."""
    o = options(ctx)
    reply = o.client().cleanup(run_id, ProgressLines())
    if o.json:
        print_json(to_dict(reply))
    else:
        console.print(f"removed {count(reply.worktrees_removed, 'worktree')}; branches kept")
    if reply.nodes_unreachable:
        if not o.json:
            console.print(f"unreachable, not cleaned: {', '.join(reply.nodes_unreachable)}")
        raise typer.Exit(EXIT_FAILED)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _age(text: str) -> float:
    """`90s`, `45m`, `12h`, `30d`, `2w` -> seconds."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    seconds = float(found.group(1)) * _UNITS[found.group(2)] if found else 0.0
    if not 0 < seconds < 1e10:
        raise CliError(f"invalid --older-than {text!r} (a number and a unit: 90s, 45m, 12h, 30d, 2w)")
    return seconds


def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", metavar="AGE", help="Runs that ended at least AGE ago: 90s, 45m, 12h, 30d, 2w."
        ),
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask; needed without a terminal.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")
    ] = False,
) -> None:
    """Forget old runs: their branches and refs on the remote and on the nodes, then their records."""
    o = options(ctx)
    seconds = _age(older_than)
    if not (yes or dry_run or sys.stdin.isatty()):
        raise CliError(
            "prune removes branches and asks first, but there is no terminal to ask on; "
            "pass --yes (or --dry-run to list only); nothing was removed"
        )
    client, show = o.client(), ProgressLines()
    plan = client.prune(coordinator_pb2.PruneRequest(older_than_s=seconds, dry_run=True), show)
    listing = sys.stderr if o.json and not dry_run else sys.stdout
    if not plan.runs:
        if o.json:
            print_json(to_dict(plan))
        else:
            print(f"nothing to prune: no run ended more than {older_than} ago")
        return
    if o.json and dry_run:
        print_json(to_dict(plan))
        return
    print("\n".join(prune_lines(plan, older_than)), file=listing)
    if dry_run:
        print("(a dry run: nothing was removed)")
        return
    if not yes and not typer.confirm("remove all of this?", err=True):
        print("flota: not confirmed; nothing was removed", file=sys.stderr)
        raise typer.Exit(EXIT_FAILED)
    request = coordinator_pb2.PruneRequest(older_than_s=seconds, run_ids=[r.id for r in plan.runs])
    reply = client.prune(request, show)
    kept = [r for r in reply.runs if not r.forgotten]
    if o.json:
        print_json(to_dict(reply))
    else:
        refs = count(sum(r.removed for r in reply.remotes), "ref")
        on_nodes = f"{count(reply.worktrees_removed, 'worktree')} and {count(reply.node_refs_removed, 'ref')}"
        print(
            f"removed {count(len(reply.runs) - len(kept), 'run')}, "
            f"{refs} from the remotes, {on_nodes} on the nodes"
        )
        for r in kept:
            print(f"kept {r.id}: {r.kept} (flota prune again to finish it)")
    if kept:
        raise typer.Exit(EXIT_FAILED)
