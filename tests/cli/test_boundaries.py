"""The CLI's two boundaries: it imports neither daemon (it talks to the coordinator over
gRPC only and execs the daemons as processes), and its client is typed end to end."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import typing
from pathlib import Path

from tests.fleet import ROOT

CLI_DIR = ROOT / "cli"
DAEMONS = ("coordinator", "node_agent")


def _imported(path: Path) -> set[str]:
    """Every absolute module a file imports, at top level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_cli_imports_neither_daemon() -> None:
    files = sorted(CLI_DIR.glob("*.py"))
    assert len(files) > 5
    for path in files:
        bad = {n for n in _imported(path) if n.split(".")[0] in DAEMONS}
        assert not bad, f"{path.name} imports {bad}"


def test_loading_every_command_loads_no_daemon() -> None:
    code = (
        "import sys, cli.main, cli.agents, cli.follow\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {DAEMONS!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _mentions_any(hint: object) -> bool:
    return hint is typing.Any or any(_mentions_any(arg) for arg in typing.get_args(hint))


def test_client_methods_are_typed() -> None:
    from cli.client import Client  # (tests/conftest.py puts back the GRPC_VERBOSITY it sets)

    methods = {
        name: fn for name, fn in inspect.getmembers(Client, inspect.isfunction) if not name.startswith("_")
    }
    # One method per RPC the CLI makes; `close` is the channel's.
    assert {"drain_node", "submit_run", "watch_run", "stream_logs", "get_run", "close"} <= set(methods)
    for name, fn in methods.items():
        hints = typing.get_type_hints(fn)
        assert "return" in hints, name
        params = [p for p in inspect.signature(fn).parameters if p != "self"]
        assert all(p in hints for p in params), name
        assert not any(_mentions_any(h) for h in hints.values()), f"Client.{name} has Any: {hints}"
    assert not hasattr(Client, "call") and not hasattr(Client, "stream")
