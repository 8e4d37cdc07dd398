"""Requests checked at the edge, and turned into the service's plain inputs.

Each check raises InvalidRequest with one line; values are quoted through
`limits.show` (a status trailer must stay short). The rules themselves are
protos/limits.py, shared with the node, which checks its JobSpec with the same ones.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from coordinator.errors import InvalidRequest
from coordinator.models import JobPlacement
from protos.flota.v1 import coordinator_pb2
from protos.graph import graph_problems
from protos.limits import (
    CONTROL_RE,
    ENV_KEY_RE,
    LABEL_KEY_RE,
    LABEL_VALUE_RE,
    MAX_BUDGET_USD,
    MAX_DEPENDENCIES,
    MAX_IGNORE_PATHS,
    MAX_INPUT,
    MAX_JOBS,
    MAX_STEPS,
    MAX_TIMEOUT_S,
    MODEL_RE,
    NAME_RE,
    PROFILE_RE,
    show,
    valid_api_base,
    valid_id,
    valid_ignore_path,
    valid_input_path,
    valid_text,
)

__all__ = [
    "MAX_TASKS",
    "REPORT_KEYS",
    "Prune",
    "Submission",
    "Task",
    "address_ok",
    "check_id",
    "prune",
    "submission",
]

MAX_TASKS = MAX_JOBS
MAX_SECRETS = 64
MAX_PRUNE_IDS = 100_000
REPORT_KEYS = frozenset({"cost_usd", "steps", "tokens_in", "tokens_out"})
# A dotted path, or up to four separated by "|": the first one present is read.
_PATH_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+){0,7}(\|[A-Za-z0-9_]+(\.[A-Za-z0-9_]+){0,7}){0,3}\Z")


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    agent: str
    command: str
    prompt: str = ""
    model: str = ""
    requires: str = ""
    report_paths: Mapping[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()  # names of other tasks of the run
    role: str = ""
    check: str = ""  # this task's own check; empty: the run's
    env: Mapping[str, str] = field(default_factory=dict)  # the template's; the run's wins
    ignore_paths: tuple[str, ...] = ()
    input: str = ""  # batch: the job's input text
    input_path: str = ""  # batch: its file, in the worktree or written to the scratch directory


@dataclass(frozen=True, slots=True)
class Submission:
    """A checked SubmitRun request."""

    tasks: tuple[Task, ...]
    name: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    timeout_s: float = 0.0
    retries: int = -1  # -1: the coordinator's default
    placement: JobPlacement = field(default_factory=JobPlacement)
    max_steps: int = 0
    budget_usd: float = 0.0
    api_base: str = ""
    check: str = ""
    resume_from_partial: bool = False
    allow_empty: bool = False
    repo_path: str = ""
    repo_remote: str = ""
    repo_ref: str = ""
    from_working_tree: bool = False
    run_budget_usd: float = 0.0  # batch: the run's total; 0: none
    brief: bool = False  # batch: a lean reply


def check_id(value: str, what: str) -> str:
    if not valid_id(value):
        raise InvalidRequest(f"invalid {what} {show(value)}")
    return value


@dataclass(frozen=True, slots=True)
class Prune:
    older_than_s: float
    dry_run: bool
    run_ids: frozenset[str]


def prune(request: coordinator_pb2.PruneRequest) -> Prune:
    age = request.older_than_s
    if not (age > 0 and math.isfinite(age)):  # 0 would take every ended run, NaN none
        raise InvalidRequest(f"older_than_s must be a positive number of seconds, not {age!r}")
    if len(request.run_ids) > MAX_PRUNE_IDS:
        raise InvalidRequest(f"at most {MAX_PRUNE_IDS} run ids per prune")
    return Prune(age, request.dry_run, frozenset(check_id(r, "run id") for r in request.run_ids))


def _repo(r: coordinator_pb2.RepoRequest) -> None:
    """What push_base would hand to git, and echo whole in its errors."""
    for what, value, limit in (("path", r.path, 4096), ("remote", r.remote, 4096), ("ref", r.ref, 256)):
        if len(value) > limit or CONTROL_RE.search(value) or value.startswith("-"):
            raise InvalidRequest(f"invalid repository {what} {show(value)}")
    if "::" in r.remote.split("/", 1)[0]:  # <transport>::<address>: ext::, fd::, remote helpers
        raise InvalidRequest(f"invalid remote {show(r.remote)} (remote helpers are not allowed)")


def _placement(p: coordinator_pb2.PlacementSpec) -> JobPlacement:
    for key, value in p.labels.items():
        if not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(value):
            raise InvalidRequest(f"invalid label {key}={value} (letters, digits, . _ - / :)")
    for net in [*p.networks, *p.avoid_networks]:
        if not PROFILE_RE.match(net):
            raise InvalidRequest(f"invalid network profile {net!r}")
    r = p.resources
    if not (0 <= r.cpus <= 4096 and 0 <= r.memory_mb <= 2**24 and 0 <= r.gpus <= 64):
        raise InvalidRequest("resource request out of range")
    return JobPlacement(
        node=p.node,
        labels=dict(p.labels),
        networks=tuple(p.networks),
        avoid_networks=tuple(p.avoid_networks),
        exclusive=p.exclusive,
        spread=p.spread,
        cpus=r.cpus,
        memory_mb=r.memory_mb,
        gpus=r.gpus,
    )


def _task(task: coordinator_pb2.TaskSpec) -> Task:
    agent = task.agent or "shell"
    if agent == "llm":
        if not valid_text(task.prompt):
            raise InvalidRequest("an llm task needs a prompt (at most 64 KiB, no NUL)")
        if not MODEL_RE.match(task.model):
            raise InvalidRequest(
                f"invalid model {show(task.model)} (a litellm model string, e.g. openai/gpt-4o)"
            )
    else:
        if agent != "shell" and (
            not NAME_RE.match(agent) or (task.requires and not NAME_RE.match(task.requires))
        ):
            raise InvalidRequest(f"unknown agent {agent!r} (shell, llm, or an agent CLI template)")
        if not valid_text(task.command):
            raise InvalidRequest("every task needs a command (at most 64 KiB, no NUL)")
        if task.model and not MODEL_RE.match(task.model):
            raise InvalidRequest(f"invalid model {show(task.model)}")
        for key, path in task.report_paths.items():
            if key not in REPORT_KEYS or not _PATH_RE.match(path):
                raise InvalidRequest(
                    f"invalid report path {key}={path!r} (keys: {', '.join(sorted(REPORT_KEYS))})"
                )
    if CONTROL_RE.search(task.name) or "\0" in task.prompt:
        raise InvalidRequest("a task name has no control characters, a prompt no NUL")
    if task.check and not valid_text(task.check):
        raise InvalidRequest("a task's check command is at most 64 KiB, without NUL")
    if len(task.depends_on) > MAX_DEPENDENCIES:
        raise InvalidRequest(f"a task depends on at most {MAX_DEPENDENCIES} others")
    if task.role and not NAME_RE.match(task.role):
        raise InvalidRequest(f"invalid role {show(task.role)} (letters, digits, . _ -)")
    if (task.env or task.ignore_paths) and agent in ("shell", "llm"):
        raise InvalidRequest(f"a template's env and ignore paths are for agent CLIs, not {agent}")
    _env(task.env)
    if len(task.ignore_paths) > MAX_IGNORE_PATHS:
        raise InvalidRequest(f"at most {MAX_IGNORE_PATHS} ignore paths per task")
    for path in task.ignore_paths:
        if not valid_ignore_path(path):
            raise InvalidRequest(f"invalid ignore path {show(path)} (a relative glob, no '..')")
    if len(task.input.encode()) > MAX_INPUT or "\0" in task.input:
        raise InvalidRequest(f"a job's input is at most {MAX_INPUT} bytes, without NUL")
    if task.input_path and not valid_input_path(task.input_path):
        raise InvalidRequest(f"invalid input path {show(task.input_path)} (a relative path, no ..)")
    return Task(
        name=task.name,
        agent=agent,
        command=task.command,
        prompt=task.prompt,
        model=task.model,
        requires=task.requires,
        report_paths=dict(task.report_paths),
        depends_on=tuple(task.depends_on),
        role=task.role,
        check=task.check,
        env=dict(task.env),
        ignore_paths=tuple(task.ignore_paths),
        input=task.input,
        input_path=task.input_path,
    )


def _graph(tasks: tuple[Task, ...]) -> None:
    """A run as a graph: dependencies name other tasks of the run, by unique names, with
    no cycle (the CLI's plan check says the same, each problem on its line)."""
    if not any(t.depends_on for t in tasks):
        return
    names = [t.name for t in tasks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice or not all(names):
        raise InvalidRequest(
            f"the tasks of a graph need unique names (given twice: {show(', '.join(twice))})"
        )
    problems = graph_problems({t.name: t.depends_on for t in tasks})
    if problems:
        raise InvalidRequest(
            f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        )


def _env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not ENV_KEY_RE.match(key):
            raise InvalidRequest(f"invalid environment variable name {show(key)}")
        if "\0" in value:  # no environment can hold it; the node refuses the job
            raise InvalidRequest(f"the value of {key} has a NUL byte")


def submission(request: coordinator_pb2.SubmitRunRequest) -> Submission:
    """A SubmitRun request checked whole, before anything is stored or pushed."""
    if not 0 < len(request.tasks) <= MAX_TASKS:
        raise InvalidRequest(f"a run needs 1 to {MAX_TASKS} tasks")
    tasks = tuple(_task(t) for t in request.tasks)
    _graph(tasks)
    if not 0 <= request.max_steps <= MAX_STEPS:
        raise InvalidRequest("max steps must be between 0 (the agent's default) and 10000")
    if not 0 <= request.budget_usd <= MAX_BUDGET_USD or request.budget_usd != request.budget_usd:
        raise InvalidRequest("budget must be between 0 (none) and 100000 USD")
    if not 0 <= request.run_budget_usd <= MAX_BUDGET_USD:  # NaN fails it too
        raise InvalidRequest("the run's budget must be between 0 (none) and 100000 USD")
    if request.api_base and not valid_api_base(request.api_base):
        raise InvalidRequest(f"invalid api base {request.api_base!r} (an http:// or https:// URL)")
    if request.check and not valid_text(request.check):
        raise InvalidRequest("the check command is at most 64 KiB, without NUL")
    if CONTROL_RE.search(request.name):
        raise InvalidRequest("a run name has no control characters")
    _env(request.env)
    if not 0 <= request.timeout_s <= MAX_TIMEOUT_S:
        raise InvalidRequest("timeout must be between 0 (none) and 7 days")
    if len(request.secrets) > MAX_SECRETS:
        raise InvalidRequest(f"at most {MAX_SECRETS} secrets per run")
    for name in request.secrets:
        if name in request.env:
            raise InvalidRequest(f"{name} is given both as --env and as --secret")
    if not -1 <= request.retries <= 10:
        raise InvalidRequest("retries must be between 0 and 10")
    placement = _placement(request.placement)
    if request.repo.path:
        _repo(request.repo)
    r = request.repo
    return Submission(
        tasks=tasks,
        name=request.name,
        env=dict(request.env),
        secrets=tuple(dict.fromkeys(request.secrets)),
        timeout_s=request.timeout_s,
        retries=request.retries,
        placement=placement,
        max_steps=request.max_steps,
        budget_usd=request.budget_usd,
        api_base=request.api_base,
        check=request.check,
        resume_from_partial=request.resume_from_partial,
        allow_empty=request.allow_empty,
        repo_path=r.path,
        repo_remote=r.remote,
        repo_ref=r.ref,
        from_working_tree=r.from_working_tree,
        run_budget_usd=request.run_budget_usd,
        brief=request.brief,
    )


def address_ok(address: str) -> bool:
    """host:port where the host is an IP literal or a plain name."""
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return bool(NAME_RE.match(host))
    return True
