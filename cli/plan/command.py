"""`flota plan FEATURE`: a planner model splits a feature into a plan file to read, edit,
and run (`flota run --plan`). Runs on this machine; no coordinator is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.client import EXIT_FAILED, CliError
from cli.options import options
from cli.render import console, print_json

__all__ = ["plan"]


def plan(
    ctx: typer.Context,
    feature: Annotated[str, typer.Argument(help="What to build, in a sentence or a paragraph.")],
    planner: Annotated[
        str, typer.Option(help="The planner's model (litellm string: anthropic/..., openai/..., ollama/...).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The plan file to write.")] = Path(
        "plan.yaml"
    ),
    repo: Annotated[Path, typer.Option(help="The repository the plan is for.")] = Path("."),
    api_base: Annotated[
        str, typer.Option(help="An OpenAI-compatible server for the planner (http://host:port/v1).")
    ] = "",
    attempts: Annotated[int, typer.Option(help="Answers the planner may give before flota plan fails.")] = 3,
    context_chars: Annotated[
        int, typer.Option(help="At most this much of the repository (file tree, key files) is shown.")
    ] = 60_000,
    max_tokens: Annotated[int, typer.Option(help="Tokens the planner may write per answer.")] = 4096,
    agent: Annotated[str, typer.Option(help="The plan's agent for every task (written in the plan).")] = "",
    model: Annotated[str, typer.Option(help="The plan's model for its agent tasks.")] = "",
    check: Annotated[str, typer.Option(help="The plan's check command, run after each task.")] = "",
    budget: Annotated[float, typer.Option(help="The plan's USD budget per llm task.")] = 0.0,
) -> None:
    """Plan a feature into role tasks (a YAML file), with a model of your choice."""
    o = options(ctx)
    if not 1 <= attempts <= 10:
        raise CliError("--attempts must be between 1 and 10")
    if context_chars < 1000:
        raise CliError("--context-chars must be at least 1000")
    if not 100 <= max_tokens <= 200_000:
        raise CliError("--max-tokens must be between 100 and 200000")
    if not repo.is_dir():
        raise CliError(f"no such directory: {repo}")
    if not feature.strip():
        raise CliError("say what to plan: a feature, in words")
    from cli.plan.context import repo_context
    from cli.plan.files import repo_paths, write
    from cli.plan.planner import PlanFailed, Planner

    defaults: dict[str, Any] = {
        k: v for k, v in {"agent": agent, "model": model, "check": check, "budget": budget}.items() if v
    }
    paths = repo_paths(repo)
    worker = Planner(planner, api_base, attempts, max_tokens=max_tokens, defaults=defaults)
    try:
        made, answers = worker.plan(feature, repo_context(repo, paths, context_chars), paths)
    except PlanFailed as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    write(output, made)
    if o.json:
        print_json(
            {
                "path": str(output),
                "answers": answers,
                "tasks": [{"id": t.id, "role": t.role, "depends_on": list(t.depends_on)} for t in made.tasks],
                "warnings": list(made.warnings),
            }
        )
        return
    console.print(f"{output}: {len(made.tasks)} tasks from {planner} ({answers} answer{'s' * (answers > 1)})")
    for t in made.tasks:
        after = f" after {', '.join(t.depends_on)}" if t.depends_on else ""
        console.print(f"  {t.id} ({t.role or 'task'}){after}", markup=False, highlight=False)
    for warning in made.warnings:
        console.print(f"warning: {warning}", markup=False, highlight=False)
    console.print(f"run it: flota run --plan {output} --repo {repo} --follow", markup=False, highlight=False)
