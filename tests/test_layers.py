"""The layering DESIGN.md rests on, checked on the source's import statements.

- The pure decision modules (and everything they import from the project) import no
  gRPC and no protobuf messages: proto types stop at the edges. `protos.contract` and
  `protos.limits` are plain Python shared by both daemons, and allowed.
- `cli/` imports neither daemon; the coordinator and the node never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.fleet import ROOT

PURE = [
    "coordinator.models",
    "coordinator.scheduler",
    "coordinator.outcomes",
    "coordinator.fleet",
    "node_agent.lifecycle",
]
FORBIDDEN_IN_PURE = ("grpc", "google.protobuf", "protos.flota", "protos.channels", "protos.peer")
PACKAGES = ("coordinator", "node_agent", "cli", "protos")


def _path(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(module: str) -> set[str]:
    path = _path(module)
    assert path is not None, module
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from coordinator import outcomes` imports a module too.
            found.update(
                f"{node.module}.{alias.name}" for alias in node.names if _path(f"{node.module}.{alias.name}")
            )
    return found


def _closure(module: str) -> dict[str, set[str]]:
    """Every project module reachable from `module`, with what each imports."""
    seen: dict[str, set[str]] = {}
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen[current] = _imports(current)
        todo += [m for m in seen[current] if m.split(".")[0] in PACKAGES and _path(m)]
    return seen


def _modules(package: str) -> list[str]:
    return [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in sorted((ROOT / package).rglob("*.py"))
        if "_pb2" not in p.name
    ]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_grpc_and_no_protobuf(module: str) -> None:
    bad = [
        f"{where} imports {name}"
        for where, names in _closure(module).items()
        for name in sorted(names)
        if name == "grpc" or name.startswith(FORBIDDEN_IN_PURE)
    ]
    assert not bad, bad


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("cli", ("coordinator", "node_agent")),
        ("coordinator", ("node_agent", "cli")),
        ("node_agent", ("coordinator", "cli")),
    ],
)
def test_packages_keep_to_their_side(package: str, forbidden: tuple[str, ...]) -> None:
    bad = [
        f"{module} imports {name}"
        for module in _modules(package)
        for name in sorted(_imports(module))
        if name.split(".")[0] in forbidden
    ]
    assert not bad, bad


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The rule is not vacuous: the edge modules it allows to import gRPC do."""
    assert "grpc" in _imports("coordinator.api")
    assert any(n.startswith("protos.flota") for n in _imports("coordinator.convert"))


@pytest.mark.parametrize("entry", ["node_agent.__main__", "node_agent.app"])
def test_the_node_daemon_never_imports_litellm(entry: str) -> None:
    """litellm (~2 s, 150 MB) lives in the llm agent's processes only: the agent host
    and the agent itself, never the daemon, even inside a function."""
    reached = _closure(entry)
    assert "node_agent.runner" in reached  # the closure does walk the daemon
    bad = sorted(
        m for m, names in reached.items() if "litellm" in names or m.startswith("node_agent.agents.llm.")
    )
    assert not bad, bad
    assert "litellm" in _imports("node_agent.agents.llm.host")  # the checker sees it where it is
