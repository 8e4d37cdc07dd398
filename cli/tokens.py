"""`flota token create`: one-time join tokens for new nodes."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.client import CliError
from cli.options import options
from cli.render import console, print_json, to_dict

__all__ = ["MAX_TTL_S", "MIN_TTL_S", "token_app"]

MIN_TTL_S = 10.0
MAX_TTL_S = 7 * 86400.0

token_app = typer.Typer(help="Join tokens for new nodes.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    ttl: Annotated[float, typer.Option(metavar="SECONDS", help="Lifetime: 10 s to 7 days.")] = 900,
) -> None:
    """Make a one-time join token and print the command that uses it."""
    # The coordinator's own limits; 0 would silently take its default, so it is refused too.
    if not MIN_TTL_S <= ttl <= MAX_TTL_S:
        raise CliError(f"--ttl must be between {MIN_TTL_S:.0f} s and 7 days ({MAX_TTL_S:.0f} s), not {ttl:g}")
    o = options(ctx)
    reply = o.client().create_token(ttl)
    if o.json:
        print_json(to_dict(reply))
        return
    console.print(f"flota node join {reply.join_address} --token {reply.token}", soft_wrap=True)
