"""`flota feature "..."`: plan -> the plan shown (confirmed, or --yes) -> run as a graph on
the fleet with live progress -> merge queue -> pull request, with the total cost. It stops
before any merge when the run's budget is reached."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.client import EXIT_FAILED, CliError
from cli.options import options
from cli.render import console, print_json
from protos.contract import flota_home
from protos.flota.v1 import coordinator_pb2

__all__ = ["budget_reached", "feature"]


def budget_reached(run: coordinator_pb2.Run) -> bool:
    """The run's budget (its jobs' together) is spent; a run without one never is."""
    budget = sum(j.budget_usd for j in run.jobs)
    return budget > 0 and sum(j.result.cost_usd for j in run.jobs) >= budget


def feature(  # noqa: PLR0913
    ctx: typer.Context,
    text: Annotated[
        str, typer.Argument(metavar="FEATURE", help="What to build, in a sentence or a paragraph.")
    ],
    planner: Annotated[str, typer.Option(help="The planner's model (litellm string).")],
    repo: Annotated[Path, typer.Option(help="The repository.")] = Path("."),
    check: Annotated[str, typer.Option(help="The check: after each task, and after each merge.")] = "",
    api_base: Annotated[str, typer.Option(help="An OpenAI-compatible server for the planner.")] = "",
    agent: Annotated[str, typer.Option(help="The plan's agent for every task.")] = "",
    model: Annotated[str, typer.Option(help="The plan's model for its agent tasks.")] = "",
    budget: Annotated[float, typer.Option(help="USD budget per llm task (the run's: their sum).")] = 0.0,
    pr: Annotated[bool, typer.Option("--pr", help="Open the pull request (gh or glab), or say how.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Run the plan without asking.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The plan file to write.")] = None,
) -> None:
    """Plan a feature, run it as a graph on the fleet, merge the results, open the PR."""
    from cli.agents import TEMPLATES, load_repo_config
    from cli.follow import follow_run
    from cli.merge.command import merge_run
    from cli.plan.command import plan
    from cli.plan.files import graph_run

    o = options(ctx)
    repo_path = repo.resolve()
    if not (repo_path / ".git").exists():
        raise CliError(f"{repo} is not a git repository")
    if not yes and not sys.stdin.isatty():
        raise CliError("no terminal to confirm the plan on: read it and pass --yes")
    path = output or flota_home() / "plans" / f"feature-{abs(hash(text)) % 10**8}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    ctx.invoke(
        plan, ctx, feature=text, planner=planner, output=path, repo=repo_path, api_base=api_base, attempts=3,
        context_chars=60_000, max_tokens=4096, agent=agent, model=model, check=check, budget=budget,
    )  # fmt: skip
    if not yes and not typer.confirm("Run this plan on the fleet?", default=False):
        raise CliError(f"not run; the plan is in {path} (flota run --plan {path})", EXIT_FAILED)
    tasks, plan_budget, plan_check = graph_run(
        path, str(repo_path), {**TEMPLATES, **load_repo_config(repo_path).agents}
    )
    request = coordinator_pb2.SubmitRunRequest(
        tasks=tasks, budget_usd=plan_budget or 0.0, check=plan_check or "", retries=-1, name=text[:60]
    )
    request.repo.CopyFrom(coordinator_pb2.RepoRequest(path=str(repo_path)))
    client = o.client()
    submitted = client.submit_run(request)
    console.print(f"run {submitted.id}: {len(submitted.jobs)} tasks", markup=False)
    run = follow_run(client, submitted, live=console.is_terminal and not o.json)
    spent = sum(j.result.cost_usd for j in run.jobs)
    if budget_reached(run):
        raise CliError(
            f"run {run.id} reached its budget (${spent:.4f}): "
            f"stopped before any merge (flota merge {run.id})",
            EXIT_FAILED,
        )
    report = merge_run(
        client, run.id, repo_path, check=check or plan_check or "", pr=pr,
        say=lambda line: console.print(line, markup=False, highlight=False),
    )  # fmt: skip
    fixes = [client.get_job(j).result.cost_usd for j in report["fix_jobs"]]
    total = spent + sum(fixes)
    if o.json:
        print_json({**report, "plan": str(path), "total_cost_usd": total})
    else:
        console.print(f"{report['branch']} at {report['head'][:12]}; description: {report['description']}")
        if report["pr"]:
            console.print(report["pr"], markup=False)
        console.print(f"total cost: ${total:.4f}")
    if report["evicted"] or run.status != "success":
        raise typer.Exit(EXIT_FAILED)
