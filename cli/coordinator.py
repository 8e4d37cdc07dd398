"""`flota coordinator start`: the coordinator daemon, exec'd in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.daemon import exec_daemon
from cli.options import check_address, json_flag

__all__ = ["coordinator_app"]

coordinator_app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)


@coordinator_app.command("start")
def coordinator_start(
    ctx: typer.Context,
    listen: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="Where the API listens; port 0 picks a free one.")
    ] = "0.0.0.0:7370",
    home: Annotated[
        str | None,
        typer.Option(metavar="DIR", help="State directory root (default: $FLOTA_HOME or ~/.flota)."),
    ] = None,
    join_port: Annotated[
        int | None,
        typer.Option(metavar="PORT", help="Port of the enrollment service (default: API port + 1)."),
    ] = None,
    advertise: Annotated[
        str | None, typer.Option(metavar="HOST", help="Host name or address nodes use to reach this machine.")
    ] = None,
    lost_after: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Silence before a node is lost (default 30).")
    ] = None,
    unreachable_after: Annotated[
        float | None,
        typer.Option(metavar="SECONDS", help="Silence before a node is unreachable (default 3)."),
    ] = None,
    push_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS", help="How long pushing a run's base may take (default 90, at most 110)."
        ),
    ] = None,
    no_mdns: Annotated[bool, typer.Option("--no-mdns", help="Do not announce on mDNS.")] = False,
) -> None:
    """Run the coordinator in the foreground (creates its CA on first start)."""
    args = ["start", "--listen", check_address(listen, "--listen", 7370)]
    for flag, value in (
        ("--home", home),
        ("--join-port", join_port),
        ("--advertise", advertise),
        ("--lost-after", lost_after),
        ("--unreachable-after", unreachable_after),
        ("--push-timeout", push_timeout),
    ):
        if value is not None:
            args += [flag, str(value)]
    if no_mdns:
        args.append("--no-mdns")
    exec_daemon("coordinator", [*args, *json_flag(ctx)])
