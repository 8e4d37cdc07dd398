"""A plan: the file `flota plan` writes and `flota run --plan` reads. Pure: data in,
problems and warnings out, one line each (no I/O but `load`'s read of the file).

    agent: shell            # run-wide defaults, each optional
    model: openai/gpt-4o
    budget: 0.5             # USD per llm task
    check: pytest -q
    feature: add a --verbose flag   # what it was planned for (a note)
    tasks:
      - id: coder
        role: coder
        prompt: ...          # for the shell agent: the command
        files: [cli/*.py]    # globs it expects to own
      - id: tester
        role: tester
        prompt: ...
        depends_on: [coder]
        check: pytest -q tests/test_cli.py

Problems (the plan is refused, every one said): an unknown key, a task without an id or
a prompt, a duplicate id, a dependency on a missing task, a cycle, a value of the wrong
type. Warnings (the plan stands): two tasks that may run at the same time (neither waits
on the other, even through others) whose `files` may name the same paths.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protos.graph import ancestors, graph_problems
from protos.limits import NAME_RE

__all__ = ["PLAN_KEYS", "TASK_KEYS", "Plan", "PlanTask", "check", "overlaps", "to_data"]

PLAN_KEYS = ("agent", "model", "budget", "check", "feature", "tasks")
TASK_KEYS = ("id", "role", "prompt", "agent", "model", "depends_on", "files", "check")
MAX_PLAN_TASKS = 1000


@dataclass(frozen=True, slots=True)
class PlanTask:
    id: str
    prompt: str
    role: str = ""
    agent: str = ""  # "": the plan's
    model: str = ""
    depends_on: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    check: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    tasks: tuple[PlanTask, ...]
    agent: str = "shell"
    model: str = ""
    budget: float = 0.0
    check: str = ""
    feature: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def agent_of(self, task: PlanTask) -> str:
        return task.agent or self.agent

    def model_of(self, task: PlanTask) -> str:
        return task.model or self.model


def _text(value: Any, where: str, key: str, problems: list[str]) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(f"{where}: {key} must be text, not {type(value).__name__}")
        return ""
    return value


def _texts(value: Any, where: str, key: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # one name for a list of one
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}: {key} must be a list of text")
        return ()
    return tuple(value)


def _unknown(data: Mapping[Any, Any], known: Sequence[str], where: str, problems: list[str]) -> None:
    for key in data:
        if key not in known:
            problems.append(f"{where}: unknown key {str(key)!r} (known: {', '.join(known)})")


def _task(raw: Any, number: int, plan_agent: str, plan_model: str, problems: list[str]) -> PlanTask | None:
    if not isinstance(raw, dict):
        problems.append(f"task {number}: must be a mapping of {', '.join(TASK_KEYS)}")
        return None
    ident = _text(raw.get("id"), f"task {number}", "id", problems)
    where = f"task {ident!r}" if ident else f"task {number}"
    _unknown(raw, TASK_KEYS, where, problems)
    if not ident:
        problems.append(f"task {number} has no id")
    elif not NAME_RE.match(ident):
        problems.append(f"{where}: the id is letters, digits, '.', '_' or '-' (at most 63)")
    prompt = _text(raw.get("prompt"), where, "prompt", problems)
    if not prompt.strip():
        problems.append(f"{where} has no prompt")
    role = _text(raw.get("role"), where, "role", problems)
    if role and not NAME_RE.match(role):
        problems.append(f"{where}: the role is one word (letters, digits, '.', '_' or '-')")
    task = PlanTask(
        id=ident,
        prompt=prompt,
        role=role,
        agent=_text(raw.get("agent"), where, "agent", problems),
        model=_text(raw.get("model"), where, "model", problems),
        depends_on=_texts(raw.get("depends_on"), where, "depends_on", problems),
        files=_texts(raw.get("files"), where, "files", problems),
        check=_text(raw.get("check"), where, "check", problems),
    )
    if (task.agent or plan_agent) == "llm" and not (task.model or plan_model):
        problems.append(f"{where}: the llm agent needs a model (the task's or the plan's `model`)")
    return task


def check(data: Any, paths: Sequence[str] = ()) -> tuple[Plan | None, list[str]]:
    """`data` (a parsed plan) as a Plan, or None and every problem; `paths`, the
    repository's files, make the overlap warnings name real files."""
    problems: list[str] = []
    if not isinstance(data, dict):
        return None, ["a plan is a mapping with a `tasks:` list"]
    _unknown(data, PLAN_KEYS, "the plan", problems)
    agent = _text(data.get("agent"), "the plan", "agent", problems) or "shell"
    model = _text(data.get("model"), "the plan", "model", problems)
    budget = data.get("budget") or 0.0
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 <= budget < math.inf:
        problems.append("the plan: budget must be a number of USD, 0 or more")
        budget = 0.0
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        problems.append("the plan has no tasks (a `tasks:` list)")
        raw_tasks = []
    elif len(raw_tasks) > MAX_PLAN_TASKS:
        problems.append(f"the plan has {len(raw_tasks)} tasks; at most {MAX_PLAN_TASKS}")
    tasks = [t for i, raw in enumerate(raw_tasks, 1) if (t := _task(raw, i, agent, model, problems))]
    seen: dict[str, int] = {}
    for i, task in enumerate(tasks, 1):
        if task.id and task.id in seen:
            problems.append(f"duplicate task id {task.id!r} (tasks {seen[task.id]} and {i})")
        seen.setdefault(task.id, i)
    graph: dict[str, tuple[str, ...]] = {}
    for task in tasks:
        if task.id:
            graph.setdefault(task.id, task.depends_on)  # a duplicate is said above
    problems += graph_problems(graph)
    plan = Plan(
        tasks=tuple(tasks),
        agent=agent,
        model=model,
        budget=float(budget),
        check=_text(data.get("check"), "the plan", "check", problems),
        feature=_text(data.get("feature"), "the plan", "feature", problems),
    )
    if problems:
        return None, problems
    return Plan(**{**_fields(plan), "warnings": tuple(_overlap_warnings(plan, graph, paths))}), []


def _fields(plan: Plan) -> dict[str, Any]:
    return {name: getattr(plan, name) for name in Plan.__dataclass_fields__}


def overlaps(ours: Sequence[str], theirs: Sequence[str], paths: Sequence[str]) -> list[str]:
    """What two tasks' globs may both own: the repository's files both match, else the
    globs that match each other (the same glob, or one matching the other's text)."""
    both = [p for p in paths if _matches(p, ours) and _matches(p, theirs)]
    if both:
        return both
    return sorted(
        {a for a in ours for b in theirs if a == b or fnmatch.fnmatchcase(a, b) or fnmatch.fnmatchcase(b, a)}
    )


def _matches(path: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, g) for g in globs)


def _overlap_warnings(plan: Plan, graph: Mapping[str, Sequence[str]], paths: Sequence[str]) -> list[str]:
    warnings = []
    tasks = [t for t in plan.tasks if t.files]
    above = {t.id: ancestors(graph, t.id) for t in tasks}
    for i, a in enumerate(tasks):
        for b in tasks[i + 1 :]:
            if a.id in above[b.id] or b.id in above[a.id]:
                continue  # one waits for the other: never at the same time
            shared = overlaps(a.files, b.files, paths)
            if shared:
                more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
                warnings.append(
                    f"tasks {a.id!r} and {b.id!r} may run at the same time and both expect to own "
                    f"{', '.join(shared[:3])}{more}"
                )
    return warnings


def to_data(plan: Plan) -> dict[str, Any]:
    """The plan as a file holds it: defaults that say nothing are left out."""
    data: dict[str, Any] = {}
    if plan.feature:
        data["feature"] = plan.feature
    for key in ("agent", "model", "budget", "check"):
        value = getattr(plan, key)
        if value and not (key == "agent" and value == "shell"):
            data[key] = value
    data["tasks"] = [
        {k: list(v) if isinstance(v, tuple) else v for k in TASK_KEYS if (v := getattr(t, k))}
        for t in plan.tasks
    ]
    return data
