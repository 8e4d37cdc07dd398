"""`flota`: the command line. Talks to the coordinator over gRPC only; the daemons are
started by exec'ing their own entry points (`python -m coordinator|node_agent`).

This module is the app: the global options, `main()`, and the table of nouns. Each noun's
commands live in their own module (Nomad's `command/` layout):

    runs.py         run, status, results, compare, logs, cancel, retry, cleanup, prune
    mcpserver.py    mcp (flota's tools for an orchestrating agent, over MCP on stdio)
    merge/          merge, pick, feature (a run's branches through a merge queue on the fleet; the PR)
    plan/           plan (a feature split into role tasks; `run --plan` runs them as a graph)
    checkout.py     checkout, diff (a job's branch in the user's repository)
    events.py       events
    dashboard/      dashboard (the web page; a package of its own)
    top/            top (the terminal UI)
    nodes.py        nodes; node start, drain, remove, join
    coordinator.py  coordinator start
    tokens.py       token create
    version.py      version
    secrets.py      secret set, list, rm
    doctor.py       doctor
    local.py        up, down

A new command goes in its noun's module and one line below. `flota --help` lists the
commands in the order registered here, then the groups.

Exit codes: 0 ok, 1 a run or job did not succeed, 2 bad input or refused request,
3 coordinator unreachable.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

try:  # typer 0.29+ vendors click: its commands are that click's, not the package's
    import typer._click as click
except ImportError:  # pragma: no cover (older typer)
    import click  # type: ignore[no-redef]

from cli import __version__, checkout, doctor, events, local, runs, top, version
from cli.client import CliError
from cli.config import load_defaults
from cli.coordinator import coordinator_app
from cli.dashboard import dashboard
from cli.mcpserver import mcp
from cli.merge.command import merge, pick
from cli.merge.feature import feature
from cli.nodes import list_nodes, node_app
from cli.options import Options
from cli.plan.command import plan
from cli.secrets import secret_app
from cli.tokens import token_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="flota",
    help="Turn the machines you own into one fleet: jobs run in parallel, each on its own git branch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Inherited by every subcommand's context: `-h` is `--help` everywhere.
    context_settings={"help_option_names": ["-h", "--help"]},
)

for _name, _command in (
    ("nodes", list_nodes),
    ("plan", plan),
    ("run", runs.run),
    ("status", runs.status),
    ("results", runs.results),
    ("compare", runs.compare),
    ("merge", merge),
    ("pick", pick),
    ("feature", feature),
    ("mcp", mcp),
    ("logs", runs.logs),
    ("cancel", runs.cancel),
    ("retry", runs.retry),
    ("checkout", checkout.checkout),
    ("diff", checkout.diff),
    ("cleanup", runs.cleanup),
    ("prune", runs.prune),
    ("events", events.events),
    ("dashboard", dashboard),
    ("top", top.top),
    ("doctor", doctor.doctor),
    ("up", local.up),
    ("down", local.down),
    ("version", version.version),
):
    app.command(_name)(_command)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(node_app, name="node")
app.add_typer(token_app, name="token")
app.add_typer(secret_app, name="secret")


def _print_version(value: bool) -> None:
    if value:
        print(f"flota {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json/--text",
            help="Print JSON (shapes in docs/cli.md), or text (the default; see output in config.toml).",
        ),
    ] = False,
    coordinator: Annotated[
        str | None,
        typer.Option(
            "--coordinator", metavar="HOST:PORT", help="The coordinator's API (or $FLOTA_COORDINATOR)."
        ),
    ] = None,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the CLI's version and exit."
        ),
    ] = False,
) -> None:
    if ctx.get_parameter_source("coordinator") == click.core.ParameterSource.DEFAULT_MAP and os.environ.get(
        "FLOTA_COORDINATOR"
    ):
        coordinator = None  # the environment comes before the config file
    ctx.obj = Options(json_output, coordinator)


_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Path": "PATH"}


def _tidy_metavars(command: click.Command) -> None:
    """typer names each value by its Python type (`<str>`, `<list[str]>`) and gives a flag
    `<bool>`; a metavar the option sets itself is kept, the others read as click's do
    (TEXT, INTEGER), a flag shows none, and an argument only its name."""
    for param in command.params:
        if param.param_type_name == "argument":
            # An argument's name is its metavar (RUN, JOB); its type column would repeat `<str>`.
            param.metavar = param.metavar or (param.name or "").upper()
            setattr(param, "display_type_rich", lambda ctx: None)  # noqa: B010 (an instance override)
            continue
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
        else:
            bare = getattr(param, "bare_type", lambda: "str")()
            element = bare.removeprefix("list[").removesuffix("]")
            param.metavar = _TYPE_NAMES.get(element, element.upper())
    help_option = command.get_help_option(click.Context(command, help_option_names=["-h", "--help"]))
    if help_option is not None:
        help_option.metavar = ""
    subcommands: dict[str, click.Command] = getattr(command, "commands", {})
    for sub in subcommands.values():
        _tidy_metavars(sub)


def _build_command() -> click.Command:
    command = typer.main.get_command(app)
    _tidy_metavars(command)
    return command


def _json_first(argv: list[str]) -> list[str]:
    """`--json` (and `--text`) are global; accept them after the command too (`flota status --json`)."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[1:end] if a in ("--json", "--text")]
    if not flags:
        return argv
    return [flags[-1], *[a for a in argv[:end] if a not in ("--json", "--text")], *argv[end:]]


def main(argv: list[str] | None = None) -> Any:
    try:
        args = _json_first(sys.argv[1:] if argv is None else argv)
        command = _build_command()
        defaults, _ = load_defaults(command)
        return command.main(args=args, prog_name="flota", standalone_mode=True, default_map=defaults)
    except CliError as exc:
        print(f"flota: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        sys.exit(130)
