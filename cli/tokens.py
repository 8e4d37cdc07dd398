"""`flota token create`: one-time join tokens for new nodes."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.options import options
from cli.render import console, print_json, to_dict

__all__ = ["token_app"]

token_app = typer.Typer(help="Join tokens for new nodes.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    ttl: Annotated[float, typer.Option(help="Lifetime in seconds.")] = 900,
) -> None:
    """Make a one-time join token and print the command that uses it."""
    o = options(ctx)
    reply = o.client().create_token(ttl)
    if o.json:
        print_json(to_dict(reply))
        return
    console.print(f"flota node join {reply.join_address} --token {reply.token}", soft_wrap=True)
