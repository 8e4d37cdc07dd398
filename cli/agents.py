"""Agents as the CLI knows them: built-in templates for agent CLIs, the repository's
`flota.yaml`, and the fan-out of tasks x models into one run's tasks.

A template is an argv with placeholders (``{prompt}``, ``{model}``, ``{api_base}``,
``{api_key}``, ``{max_steps}``), argument groups appended only when their value is given
(``--model``, ``--api-base``, ``--max-steps``), environment variables for the CLI (a
variable whose placeholder is empty is left out), the agent CLI a node must have, where
its JSON output keeps cost and steps, and the files it writes for itself (kept out of
the job's commit). The command line and environment are filled in here, shell-quoted,
so a node runs them like any job; a node never interprets a template.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cli.client import CliError
from protos.flota.v1 import coordinator_pb2

__all__ = ["NO_KEY", "TEMPLATES", "RepoConfig", "Template", "fan_out", "load_repo_config", "takes"]

CONFIG_FILE = "flota.yaml"
# The API key a CLI is given with --api-base (a loopback server wants none, every CLI
# wants one); a --secret or --env of the same name replaces it.
NO_KEY = "none"
_PLACEHOLDER = re.compile(r"\{(prompt|model|api_base|api_key|max_steps)\}")


def _fill(text: str, values: Mapping[str, str]) -> str | None:
    """``text`` with its placeholders filled in one pass, or None if one is empty."""
    if any(not values[name] for name in _PLACEHOLDER.findall(text)):
        return None
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


@dataclass(frozen=True)
class Template:
    requires: str  # an agent CLI a node must report having; "": any node
    argv: tuple[str, ...]
    model_args: tuple[str, ...] = ()  # appended when a model is given
    report: Mapping[str, str] = field(default_factory=dict)  # JobSpec.report_paths
    api_base_args: tuple[str, ...] = ()  # appended with --api-base
    max_steps_args: tuple[str, ...] = ()  # appended with --max-steps
    env: Mapping[str, str] = field(default_factory=dict)  # the CLI's variables, placeholders filled
    ignore: tuple[str, ...] = ()  # what the CLI writes for itself: never the job's work
    model: str = ""  # flota.yaml's model for this agent when the run names none

    def takes(self, placeholder: str) -> bool:
        """Whether ``{placeholder}`` reaches the CLI: in its argv, its groups or its env."""
        texts = [*self.argv, *self.api_base_args, *self.max_steps_args, *self.env.values()]
        return any(f"{{{placeholder}}}" in t for t in texts)

    def _values(self, prompt: str, model: str, api_base: str, max_steps: int) -> dict[str, str]:
        return {
            "prompt": prompt,
            "model": model,
            "api_base": api_base,
            "api_key": NO_KEY if api_base else "",
            "max_steps": str(max_steps) if max_steps else "",
        }

    def command(self, prompt: str, model: str, api_base: str = "", max_steps: int = 0) -> str:
        values = self._values(prompt, model, api_base, max_steps)
        args = [_PLACEHOLDER.sub(lambda m: values[m.group(1)], a) for a in self.argv]
        for group in (self.model_args, self.api_base_args, self.max_steps_args):
            filled = [_fill(a, values) for a in group]
            if group and all(a is not None for a in filled):
                args += [a for a in filled if a is not None]
        return shlex.join(args)

    def environment(self, model: str, api_base: str = "", max_steps: int = 0) -> dict[str, str]:
        values = self._values("", model, api_base, max_steps)
        filled = {key: _fill(text, values) for key, text in self.env.items()}
        return {key: value for key, value in filled.items() if value is not None}


# Flags as the CLIs document them for one-shot, non-interactive runs.
_LITELLM_OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # CLIs on litellm: no price-map fetch
TEMPLATES: dict[str, Template] = {
    # Claude Code 2.1.197: -p answers once and exits, its result as one JSON line on stdout.
    # acceptEdits (+ Bash): edits and commands without asking; --dangerously-skip-permissions
    # is refused for root. No telemetry, error reports or self-update (nonessential traffic).
    "claude": Template(
        "claude",
        (
            "claude",
            "-p",
            "{prompt}",
            "--output-format",
            "json",
            "--permission-mode",
            "acceptEdits",
            "--allowedTools",
            "Bash",
        ),
        ("--model", "{model}"),
        {
            "cost_usd": "total_cost_usd",
            "steps": "num_turns",
            "tokens_in": "usage.input_tokens",
            "tokens_out": "usage.output_tokens",
        },
        max_steps_args=("--max-turns", "{max_steps}"),
        env={
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "ANTHROPIC_BASE_URL": "{api_base}",
            "ANTHROPIC_API_KEY": "{api_key}",
        },
    ),
    # aider 0.86.2: --message runs one request and exits; --yes-always answers its
    # questions, the rest keeps it from asking others, opening a browser, fetching URLs
    # in the prompt, committing, or adding itself to .gitignore. It prints no JSON.
    "aider": Template(
        "aider",
        (
            "aider",
            "--yes-always",
            "--no-auto-commits",
            "--no-dirty-commits",
            "--no-gitignore",
            "--no-check-update",
            "--no-analytics",
            "--no-show-release-notes",
            "--no-show-model-warnings",
            "--no-detect-urls",
            "--no-fancy-input",
            "--no-pretty",
            "--no-stream",
            "--message",
            "{prompt}",
        ),
        ("--model", "{model}"),
        env={**_LITELLM_OFFLINE, "OPENAI_API_BASE": "{api_base}", "OPENAI_API_KEY": "{api_key}"},
        ignore=(".aider*",),
    ),
    # Codex 0.171.0: exec runs one turn, --json prints its events as JSON lines on stdout,
    # the last one (turn.completed) with the turn's tokens. It speaks the Responses API
    # only; --api-base is a provider of its own for it, without the WebSocket transport
    # (a server without one costs five reconnects first). No analytics, no update check, no
    # plugins (their marketplace is fetched from the internet at start).
    "codex": Template(
        "codex",
        (
            "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "-c",
            "analytics.enabled=false",
            "-c",
            "check_for_update_on_startup=false",
            "--disable",
            "plugins",
            "{prompt}",
        ),
        ("--model", "{model}"),
        {"tokens_in": "usage.input_tokens", "tokens_out": "usage.output_tokens"},
        api_base_args=(
            "-c",
            'model_provider="flota"',
            "-c",
            'model_providers.flota={name="flota", base_url="{api_base}", env_key="OPENAI_API_KEY", '
            'wire_api="responses", supports_websockets=false}',
        ),
        env={"OPENAI_API_KEY": "{api_key}"},
    ),
    # Gemini CLI 0.43.0 (0.44 to 0.61 refuse a GOOGLE_GEMINI_BASE_URL without a settings
    # file: "Invalid auth method selected"): --prompt answers once, json prints one
    # indented object on stdout at the end, its counts per model (summed: "*").
    "gemini": Template(
        "gemini",
        ("gemini", "--prompt", "{prompt}", "--yolo", "--skip-trust", "--output-format", "json"),
        ("--model", "{model}"),
        {
            "steps": "stats.models.*.api.totalRequests",
            "tokens_in": "stats.models.*.tokens.prompt",
            "tokens_out": "stats.models.*.tokens.candidates",
        },
        env={"GOOGLE_GEMINI_BASE_URL": "{api_base}", "GEMINI_API_KEY": "{api_key}"},
    ),
    # architect-cli 1.1.0: --json prints one indented object on stdout at the end (logs
    # go to stderr); yolo: edits without a terminal to confirm on (else tool.no_tty).
    "architect": Template(
        "architect",
        ("architect", "run", "{prompt}", "--json", "--confirm-mode", "yolo", "--no-stream"),
        ("--model", "{model}"),
        {
            "cost_usd": "costs.total_cost_usd|cost",
            "steps": "steps",
            "tokens_in": "costs.total_input_tokens",
            "tokens_out": "costs.total_output_tokens",
        },
        max_steps_args=("--max-steps", "{max_steps}"),
        env={
            **_LITELLM_OFFLINE,
            "ARCHITECT_API_BASE": "{api_base}",
            "LITELLM_API_KEY": "{api_key}",
            "OPENAI_API_KEY": "{api_key}",
        },
        ignore=(".architect",),
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
    raw_agents = data.get("agents") or {}
    if not isinstance(raw_agents, dict):
        raise CliError(f"{path}: `agents` must be a mapping of name -> template")
    agents = {str(name): _agent(path, str(name), spec) for name, spec in raw_agents.items()}
    return RepoConfig(run, agents)


def _strings(path: Path, where: str, value: object, kind: type) -> Any:
    """A list of strings (kind list) or a mapping of strings (kind dict), or the error."""
    items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [0]
    if not isinstance(value, kind) or not all(isinstance(v, str) for v in items):
        shape = "a list of strings" if kind is list else "a mapping of strings"
        raise CliError(f"{path}: {where} must be {shape}")
    return value


_AGENT_KEYS = (
    "argv",
    "requires",
    "report",
    "model_args",
    "api_base_args",
    "max_steps_args",
    "env",
    "ignore",
    "model",
    "flags",
)


def _agent(path: Path, name: str, spec: object) -> Template:
    """A template of flota.yaml's: a new one (``argv``...), or settings for a built-in one
    (``model``, ``flags`` appended to its argv, ``env`` over its own), applied on every node."""
    if not isinstance(spec, dict):
        raise CliError(f"{path}: agents.{name} must be a mapping (argv, or model/flags/env)")
    unknown = sorted(set(spec) - set(_AGENT_KEYS))
    if unknown:
        raise CliError(
            f"{path}: unknown setting agents.{name}.{unknown[0]} (known: {', '.join(_AGENT_KEYS)})"
        )
    lists = {
        k: tuple(_strings(path, f"agents.{name}.{k}", spec[k], list))
        for k in ("argv", "model_args", "api_base_args", "max_steps_args", "ignore", "flags")
        if k in spec
    }
    env = dict(_strings(path, f"agents.{name}.env", spec.get("env") or {}, dict))
    for key in env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\Z", key):
            raise CliError(f"{path}: agents.{name}.env: invalid variable name {key!r}")
    report = dict(_strings(path, f"agents.{name}.report", spec.get("report") or {}, dict))
    model = spec.get("model") or ""
    if not isinstance(model, str):
        raise CliError(f"{path}: agents.{name}.model must be a string")
    flags = lists.pop("flags", ())
    base = TEMPLATES.get(name)
    if "argv" not in lists:
        if base is None:
            raise CliError(f"{path}: agents.{name}.argv must be a non-empty list of strings")
        return dataclasses.replace(
            base,
            argv=base.argv + flags,
            env={**base.env, **env},
            report={**base.report, **report},
            model=model or base.model,
            **{k: v for k, v in lists.items()},  # type: ignore[arg-type]
        )
    if not lists["argv"]:
        raise CliError(f"{path}: agents.{name}.argv must be a non-empty list of strings")
    # `requires`: an agent CLI nodes report having (see `flota nodes`); none: any node.
    requires = spec.get("requires") or ""
    if not isinstance(requires, str):
        raise CliError(f"{path}: agents.{name}.requires must be a string")
    argv = lists.pop("argv") + flags
    return Template(requires, argv, report=report, env=env, model=model, **lists)


def takes(agent: str, templates: Mapping[str, Template], placeholder: str) -> bool:
    """Whether the agent takes --api-base ("api_base") or --max-steps ("max_steps")."""
    template = templates.get(agent)
    return agent == "llm" or (template is not None and template.takes(placeholder))


def fan_out(
    agent: str,
    tasks: Sequence[str],
    models: Sequence[str],
    workers: int,
    templates: Mapping[str, Template],
    api_base: str = "",
    max_steps: int = 0,
    metered: bool = False,
) -> list[coordinator_pb2.TaskSpec]:
    """One TaskSpec per worker. Without `workers`, every task with every model; with it,
    worker i takes task i mod T and model i mod M (round-robin, as architect-cli does).
    `metered` (a budget per worker): a shell job's --api-base is where its node's metering
    proxy forwards, so it reaches the shell agent too."""
    template = templates.get(agent)
    if agent not in ("shell", "llm") and template is None:
        known = ", ".join(["shell", "llm", *sorted(templates)])
        raise CliError(f"unknown agent {agent!r} (known: {known}; add one under agents: in flota.yaml)")
    for flag, value, placeholder in (
        ("--api-base", api_base, "api_base"),
        ("--max-steps", max_steps, "max_steps"),
    ):
        takes = agent == "llm" or (template is not None and template.takes(placeholder))
        takes = takes or (agent == "shell" and placeholder == "api_base" and metered)
        if value and not takes:
            why = (
                f"its template has no {{{placeholder}}}; see agents: in flota.yaml"
                if template
                else "a shell command takes its own flags; with --budget-per-worker it is where the "
                "job's metering proxy forwards"
            )
            raise CliError(f"{flag} does not reach the {agent} agent ({why})")
    models = list(models) or [template.model if template else ""]
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
            assert template is not None
            out.append(
                coordinator_pb2.TaskSpec(
                    agent=agent,
                    command=template.command(text, model, api_base, max_steps),
                    prompt=text,
                    model=model,
                    requires=template.requires,
                    report_paths=dict(template.report),
                    env=template.environment(model, api_base, max_steps),
                    ignore_paths=list(template.ignore),
                    name=label or text[:80],
                )
            )
    return out
