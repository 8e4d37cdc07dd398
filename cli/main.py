"""`flota`: the command line. Talks to the coordinator over gRPC only; the daemons are
started by exec'ing their own entry points (`python -m coordinator|node_agent`).

This module is the app: the global options, `main()`, and the table of nouns. Each noun's
commands live in their own module (Nomad's `command/` layout):

    runs.py         run, status, results, compare, logs, cancel, cleanup
    nodes.py        nodes; node start, drain, remove, join
    coordinator.py  coordinator start
    tokens.py       token create
    secrets.py      secret set, list, rm
    doctor.py       doctor
    local.py        up, down

A new command goes in its noun's module and one line below. `flota --help` lists the
commands in the order registered here, then the groups.

Exit codes: 0 ok, 1 a run or job did not succeed, 2 bad input or refused request,
3 coordinator unreachable.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cli import doctor, local, runs
from cli.client import CliError
from cli.coordinator import coordinator_app
from cli.nodes import list_nodes, node_app
from cli.options import Options
from cli.secrets import secret_app
from cli.tokens import token_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="flota",
    help="Turn the machines you own into one fleet: jobs run in parallel, each on its own git branch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name, _command in (
    ("nodes", list_nodes),
    ("run", runs.run),
    ("status", runs.status),
    ("results", runs.results),
    ("compare", runs.compare),
    ("logs", runs.logs),
    ("cancel", runs.cancel),
    ("cleanup", runs.cleanup),
    ("doctor", doctor.doctor),
    ("up", local.up),
    ("down", local.down),
):
    app.command(_name)(_command)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(node_app, name="node")
app.add_typer(token_app, name="token")
app.add_typer(secret_app, name="secret")


@app.callback()
def _global(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON (shapes in docs/cli.md).")] = False,
    coordinator: Annotated[
        str | None, typer.Option("--coordinator", help="Coordinator HOST:PORT (or $FLOTA_COORDINATOR).")
    ] = None,
) -> None:
    ctx.obj = Options(json_output, coordinator)


def _json_first(argv: list[str]) -> list[str]:
    """`--json` is global; accept it after the command too (`flota status --json`)."""
    end = argv.index("--") if "--" in argv else len(argv)
    if "--json" not in argv[1:end]:
        return argv
    return ["--json", *[a for a in argv[:end] if a != "--json"], *argv[end:]]


def main(argv: list[str] | None = None) -> Any:
    try:
        return app(args=_json_first(sys.argv[1:] if argv is None else argv), standalone_mode=True)
    except CliError as exc:
        print(f"flota: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        sys.exit(130)
