"""A plan file read or written; the repository's files; a plan as the tasks of a run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from cli.agents import Template, fan_out
from cli.client import CliError
from cli.plan.schema import Plan, check, to_data
from protos.flota.v1 import coordinator_pb2

__all__ = ["graph_run", "load", "problems_error", "repo_paths", "tasks_of", "write"]


def problems_error(where: str, problems: list[str]) -> CliError:
    """Every problem on its own `flota: ` line (main prints the first prefix)."""
    return CliError("\nflota: ".join(f"{where}: {p}" for p in problems))


def repo_paths(repo: Path | None) -> list[str]:
    """The repository's tracked files ([] when it is not a git work tree)."""
    if repo is None:
        return []
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [p for p in out.stdout.decode("utf-8", "replace").split("\0") if p] if out.returncode == 0 else []


def load(path: Path, repo: Path | None = None) -> Plan:
    """The plan in `path`, checked; CliError with every problem when it is not one."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read the plan {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise CliError(f"{path}: not YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    plan, problems = check(data, repo_paths(repo))
    if plan is None:
        raise problems_error(str(path), problems)
    return plan


def write(path: Path, plan: Plan) -> None:
    text = yaml.safe_dump(to_data(plan), sort_keys=False, allow_unicode=True, width=100)
    try:
        path.write_text(text)
    except OSError as exc:
        raise CliError(f"cannot write the plan {path}: {exc.strerror or exc}") from None


def tasks_of(plan: Plan, templates: Mapping[str, Template]) -> list[coordinator_pb2.TaskSpec]:
    """The plan's tasks as a run's, built as `flota run` builds one task of an agent (a
    shell task's prompt is its command), named by their ids, with their graph."""
    specs = []
    for task in plan.tasks:
        model = plan.model_of(task)
        (spec,) = fan_out(plan.agent_of(task), [task.prompt], [model] if model else [], 0, templates)
        spec.name, spec.role, spec.check = task.id, task.role, task.check
        spec.depends_on.extend(task.depends_on)
        specs.append(spec)
    return specs


def graph_run(
    path: Path, repo: str | None, templates: Mapping[str, Template]
) -> tuple[list[coordinator_pb2.TaskSpec], float | None, str | None]:
    """`flota run --plan`: the plan's tasks, and its budget and check (None: not set),
    its warnings said on stderr first."""
    plan = load(path, Path(repo) if repo else None)
    for warning in plan.warnings:
        print(f"flota: warning: {path}: {warning}", file=sys.stderr)
    return tasks_of(plan, templates), plan.budget or None, plan.check or None
