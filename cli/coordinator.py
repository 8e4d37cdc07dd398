"""`flota coordinator start`: the coordinator daemon, exec'd in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.daemon import exec_daemon
from cli.options import json_flag

__all__ = ["coordinator_app"]

coordinator_app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)


@coordinator_app.command("start", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def coordinator_start(
    ctx: typer.Context,
    listen: Annotated[
        str, typer.Option(help="HOST:PORT of the API; port 0 picks a free one.")
    ] = "0.0.0.0:7370",
) -> None:
    """Run the coordinator in the foreground (creates its CA on first start).

    More options: --join-port N, --advertise HOST, --no-mdns, --lost-after S.
    """
    exec_daemon("coordinator", ["start", "--listen", listen, *json_flag(ctx), *ctx.args])
