"""The dependency rules of a run's tasks (a run as a graph), plain Python shared by the
CLI's plan check (`cli/plan/`) and the coordinator's submit (`coordinator/validate.py`).

A graph is task name -> the names it depends on, in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["ancestors", "graph_problems"]


def graph_problems(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """One line per problem: a dependency on a missing task, on itself, twice, or a cycle
    (each cycle said once, as a path)."""
    problems: list[str] = []
    for name, needs in deps.items():
        for need in needs:
            if need == name:
                problems.append(f"task {name!r} depends on itself")
            elif need not in deps:
                problems.append(f"task {name!r} depends on {need!r}, which is not a task of the plan")
        if len(set(needs)) != len(needs):
            problems.append(f"task {name!r} names a dependency twice")
    problems += [f"a cycle: {' -> '.join(c)}" for c in _cycles(deps)]
    return problems


def _cycles(deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    found: list[list[str]] = []
    for start in deps:
        if start in state:
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            name, i = stack.pop()
            if i == 0:
                state[name] = 1
                path.append(name)
            needs = [n for n in deps.get(name, ()) if n in deps and n != name]
            if i < len(needs):
                stack.append((name, i + 1))
                nxt = needs[i]
                if state.get(nxt) == 1:
                    found.append(path[path.index(nxt) :] + [nxt])
                elif nxt not in state:
                    stack.append((nxt, 0))
                continue
            state[name] = 2
            path.pop()
    return found


def ancestors(deps: Mapping[str, Sequence[str]], name: str) -> set[str]:
    """Every task `name` waits on, directly or through others."""
    seen: set[str] = set()
    todo = list(deps.get(name, ()))
    while todo:
        need = todo.pop()
        if need not in seen:
            seen.add(need)
            todo += deps.get(need, ())
    return seen
