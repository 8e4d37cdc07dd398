"""Agents as the CLI knows them: built-in templates for agent CLIs, the repository's
`flota.yaml`, and the fan-out of tasks x models into one run's tasks.

A template is an argv with `{prompt}` and `{model}` placeholders (model arguments only
when a model is given), the agent CLI a node must have, and where the CLI's JSON output
keeps cost and steps. The command line is built here, shell-quoted, so a node runs it
like any job; a node never interprets a template.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cli.client import CliError
from protos.flota.v1 import coordinator_pb2

__all__ = ["TEMPLATES", "RepoConfig", "Template", "fan_out", "load_repo_config"]

CONFIG_FILE = "flota.yaml"


@dataclass(frozen=True)
class Template:
    requires: str  # an agent CLI a node must report having; "": any node
    argv: tuple[str, ...]
    model_args: tuple[str, ...] = ()  # appended when a model is given
    report: Mapping[str, str] = field(default_factory=dict)  # JobSpec.report_paths

    def command(self, prompt: str, model: str) -> str:
        args = [*self.argv, *(self.model_args if model else ())]
        return shlex.join(a.replace("{prompt}", prompt).replace("{model}", model) for a in args)


# Flags as the CLIs document them for one-shot, non-interactive runs.
TEMPLATES: dict[str, Template] = {
    "claude": Template(
        "claude",
        ("claude", "-p", "{prompt}", "--output-format", "json", "--dangerously-skip-permissions"),
        ("--model", "{model}"),
        {
            "cost_usd": "total_cost_usd",
            "steps": "num_turns",
            "tokens_in": "usage.input_tokens",
            "tokens_out": "usage.output_tokens",
        },
    ),
    "aider": Template(
        "aider",
        ("aider", "--yes-always", "--no-auto-commits", "--no-check-update", "--message", "{prompt}"),
        ("--model", "{model}"),
    ),
    "codex": Template("codex", ("codex", "exec", "--full-auto", "{prompt}"), ("--model", "{model}")),
    "gemini": Template("gemini", ("gemini", "--yolo", "--prompt", "{prompt}"), ("--model", "{model}")),
    "architect": Template(
        "architect",
        ("architect", "run", "{prompt}", "--json"),
        ("--model", "{model}"),
        {"cost_usd": "cost_usd", "steps": "steps"},
    ),
}


@dataclass(frozen=True)
class RepoConfig:
    """`flota.yaml`: defaults for `flota run` and user-defined agent templates."""

    run: Mapping[str, Any] = field(default_factory=dict)
    agents: Mapping[str, Template] = field(default_factory=dict)


_RUN_KEYS = {
    "agent": str,
    "models": list,
    "workers": int,
    "budget_per_worker": float,
    "timeout_per_worker": float,
    "max_steps": int,
    "check": str,
    "networks": list,
}


def load_repo_config(directory: Path) -> RepoConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        return RepoConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise CliError(f"{path}: expected a mapping with `run:` and `agents:`")
    run = data.get("run") or {}
    if not isinstance(run, dict):
        raise CliError(f"{path}: `run` must be a mapping")
    for key, value in run.items():
        kind = _RUN_KEYS.get(key)
        if kind is None:
            raise CliError(f"{path}: unknown run setting {key!r} (known: {', '.join(sorted(_RUN_KEYS))})")
        ok = isinstance(value, kind) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool)
        )
        if not ok or (kind is list and not all(isinstance(v, str) for v in value)):
            raise CliError(
                f"{path}: run.{key} must be {'a list of strings' if kind is list else kind.__name__}"
            )
    agents: dict[str, Template] = {}
    raw_agents = data.get("agents") or {}
    if not isinstance(raw_agents, dict):
        raise CliError(f"{path}: `agents` must be a mapping of name -> template")
    for name, spec in raw_agents.items():
        argv = spec.get("argv") if isinstance(spec, dict) else None
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise CliError(f"{path}: agents.{name}.argv must be a non-empty list of strings")
        report = spec.get("report") or {}
        if not isinstance(report, dict) or not all(isinstance(v, str) for v in report.values()):
            raise CliError(f"{path}: agents.{name}.report maps cost_usd/steps/tokens_in/tokens_out to paths")
        # `requires`: an agent CLI nodes report having (see `flota nodes`); none: any node.
        agents[str(name)] = Template(str(spec.get("requires") or ""), tuple(argv), (), dict(report))
    return RepoConfig(run, agents)


def fan_out(
    agent: str,
    tasks: Sequence[str],
    models: Sequence[str],
    workers: int,
    templates: Mapping[str, Template],
) -> list[coordinator_pb2.TaskSpec]:
    """One TaskSpec per worker. Without `workers`, every task with every model; with it,
    worker i takes task i mod T and model i mod M (round-robin, as architect-cli does)."""
    models = list(models) or [""]
    if workers:
        pairs = [(tasks[i % len(tasks)], models[i % len(models)]) for i in range(workers)]
    else:
        pairs = [(t, m) for t in tasks for m in models]
    out = []
    for text, model in pairs:
        label = f"{text[:60]} [{model}]" if model else ""
        if agent == "shell":
            out.append(coordinator_pb2.TaskSpec(agent="shell", command=text, model=model, name=label))
        elif agent == "llm":
            if not model:
                raise CliError("the llm agent needs a model: --model or --models (e.g. openai/gpt-4o)")
            out.append(coordinator_pb2.TaskSpec(agent="llm", prompt=text, model=model, name=label))
        else:
            template = templates.get(agent)
            if template is None:
                known = ", ".join(["shell", "llm", *sorted(templates)])
                raise CliError(
                    f"unknown agent {agent!r} (known: {known}; add one under agents: in flota.yaml)"
                )
            out.append(
                coordinator_pb2.TaskSpec(
                    agent=agent,
                    command=template.command(text, model),
                    prompt=text,
                    model=model,
                    requires=template.requires,
                    report_paths=dict(template.report),
                    name=label or text[:80],
                )
            )
    return out
