"""`flota merge RUN` and `flota pick RUN JOB`.

merge: the run's successful branches (dependencies first; a competition's winner only)
merged one by one onto ``flota/<run>/merged`` by a merge job on the fleet, the check
after each; a branch that conflicts or breaks the check is evicted, and with --fix-with
goes back to an agent. The branch is pushed (never forced) and the pull request's
description written; --pr opens it.

pick: a competition's winner recorded (on this machine, ``$FLOTA_HOME/picks.json``) as
the run's result, which merge then takes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.client import EXIT_FAILED, Client, CliError
from cli.merge.engine import FixSpec
from cli.options import options
from cli.render import console, print_json
from protos.contract import RUN_ACTIVE, flota_home
from protos.flota.v1 import coordinator_pb2

__all__ = ["fixer", "merge", "merge_run", "pick", "picks_of"]


def _picks_file() -> Path:
    return flota_home() / "picks.json"


def _read_picks() -> dict[str, str]:
    try:
        data = json.loads(_picks_file().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {_picks_file()}: {exc}") from None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def picks_of(run_id: str) -> list[str]:
    """The job `flota pick` recorded for the run, if any."""
    picked = _read_picks().get(run_id)
    return [picked] if picked else []


def pick(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="A run of competing jobs.")],
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job that wins.")],
) -> None:
    """Record a competition's winner as the run's result (flota merge takes it)."""
    o = options(ctx)
    run = o.client().get_run(run_id)
    job = next((j for j in run.jobs if j.id == job_id), None)
    if job is None:
        raise CliError(f"job {job_id} is not a job of run {run.id}")
    if job.status != "success" or not job.result.branch:
        raise CliError(f"job {job_id} ended {job.status} with no branch: it cannot be the run's result")
    picks = _read_picks()
    picks[run.id] = job.id
    path = _picks_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(picks, indent=1))
    os.replace(tmp, path)
    if o.json:
        print_json({"run": run.id, "job": job.id, "branch": job.result.branch})
    else:
        console.print(f"run {run.id}: {job.id} ({job.result.branch}) is the result", markup=False)


def fixer(spec: str, repo: Path) -> Callable[[str], coordinator_pb2.TaskSpec]:
    """--fix-with AGENT:MODEL -> prompt -> TaskSpec (llm, or an agent CLI's template)."""
    from cli.agents import TEMPLATES, fan_out, load_repo_config

    agent, sep, model = spec.partition(":")
    if not sep or not agent or not model:
        raise CliError(f"--fix-with takes AGENT:MODEL (e.g. llm:openai/gpt-4o), not {spec!r}")
    templates = {**TEMPLATES, **load_repo_config(repo).agents}
    fan_out(agent, ["check"], [model], 0, templates)  # an unknown agent: its one line now

    def task(prompt: str) -> coordinator_pb2.TaskSpec:
        return fan_out(agent, [prompt or "-"], [model], 0, templates)[0]

    return task


def merge(  # noqa: PLR0913
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="The run whose branches to merge.")],
    check: Annotated[
        str, typer.Option(help="A command run after each merge; a failure evicts the branch.")
    ] = "",
    pick_job: Annotated[
        list[str] | None, typer.Option("--pick", help="A competition's winner (a job id); repeatable.")
    ] = None,
    fix_with: Annotated[
        str, typer.Option(metavar="AGENT:MODEL", help="Send an evicted branch back to this agent to fix.")
    ] = "",
    max_fix_rounds: Annotated[int, typer.Option(help="Rounds of fixes at most (with --fix-with).")] = 1,
    api_base: Annotated[str, typer.Option(help="An OpenAI-compatible server for the fixing agent.")] = "",
    pr: Annotated[bool, typer.Option("--pr", help="Open the pull request (gh or glab), or say how.")] = False,
    forge: Annotated[
        str,
        typer.Option(help="github or gitlab: the remote's forge, when its URL does not say (self-hosted)."),
    ] = "",
    base_branch: Annotated[str, typer.Option("--base", help="The pull request's base branch.")] = "main",
    repo: Annotated[Path, typer.Option(help="The run's repository on this machine.")] = Path("."),
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The description file (default: $FLOTA_HOME/merges/RUN.md)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Each merge or fix job's time limit, in seconds; 0: none.")
    ] = 0.0,
) -> None:
    """Merge a run's branches into flota/RUN/merged on the fleet, a check after each; write the PR."""
    o = options(ctx)

    def say(line: str) -> None:
        if not o.json:
            console.print(line, markup=False, highlight=False)

    fix = FixSpec(fixer(fix_with, repo.resolve()), max_fix_rounds, api_base) if fix_with else None
    report = merge_run(
        o.client(), run_id, repo, check=check, picks=pick_job or [], fix=fix, pr=pr, forge=forge,
        base_branch=base_branch, output=output, timeout_s=timeout, say=say, max_fix_rounds=max_fix_rounds,
    )  # fmt: skip
    if o.json:
        print_json(report)
    else:
        merged = sum(1 for x in report["outcomes"] if x["state"] == "merged")
        say(
            f"{report['branch']} pushed at {report['head'][:12]}: "
            f"{merged} merged, {report['evicted']} evicted"
        )
        say(f"description: {report['description']}")
        if report["pr"]:
            say(report["pr"])
    if report["evicted"]:
        raise typer.Exit(EXIT_FAILED)


def merge_run(  # noqa: PLR0913
    client: Client,
    run_id: str,
    repo: Path,
    *,
    check: str = "",
    picks: list[str] | None = None,
    fix: FixSpec | None = None,
    max_fix_rounds: int = 1,
    pr: bool = False,
    forge: str = "",
    base_branch: str = "main",
    output: Path | None = None,
    timeout_s: float = 0.0,
    say: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """The merge queue over a run (flota merge, and the MCP server's merge tool): its report."""
    from cli.merge.engine import run_merge
    from cli.merge.pr import open_pr
    from cli.merge.queue import description, merged_branch, select

    if forge not in ("", "github", "gitlab"):
        raise CliError(f"--forge is github or gitlab, not {forge!r}")
    if max_fix_rounds < 0 or max_fix_rounds > 10:
        raise CliError("--max-fix-rounds must be between 0 and 10")
    repo_path = repo.resolve()
    if not (repo_path / ".git").exists():
        raise CliError(f"{repo} is not a git repository (give the run's repository: --repo)")
    run = client.get_run(run_id)
    if run.status in RUN_ACTIVE:
        raise CliError(f"run {run.id} is still {run.status}: merge it once it has ended")
    if not run.repo_url:
        raise CliError(f"run {run.id} has no repository: there is nothing to merge")
    chosen = [*picks_of(run.id), *(picks or [])]
    stray = [p for p in chosen if p not in {j.id for j in run.jobs}]
    if stray:
        raise CliError(f"--pick {stray[0]} is not a job of run {run.id}")
    entries, skipped = select(run, chosen)
    if not entries:
        raise CliError(f"run {run.id} has no successful branch to merge", EXIT_FAILED)
    state = run_merge(client, run, str(repo_path), entries, check, fix, timeout_s, say)
    branch = merged_branch(run.id)
    text = description(
        run, entries, state.outcomes, skipped, state.fixes, branch, state.head, check, state.node
    )
    path = output or flota_home() / "merges" / f"{run.id}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    evicted = [x for x in state.outcomes.values() if x.state == "evicted" and not x.fixed_by]
    title = f"flota: {run.name or run.id}"
    opened = open_pr(forge or run.repo_url, str(repo_path), title, path, base_branch, branch) if pr else ""
    return {
        "run": run.id,
        "branch": branch,
        "head": state.head,
        "description": str(path),
        "merge_jobs": [j.id for j in state.merge_jobs],
        "outcomes": [vars(x) for x in state.outcomes.values()],
        "evicted": len(evicted),
        "fixes": {k: v.id for k, v in state.fixes.items()},
        "fix_jobs": [j.id for j in state.fix_jobs],
        "skipped": skipped,
        "pr": opened,
    }
