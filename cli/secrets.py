"""`flota secret set|list|rm`: secrets the coordinator keeps for jobs (`flota run --secret
NAME`). A value is read from stdin or a prompt, never from the command line, and never shown."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cli.options import options
from cli.render import console, print_json, to_dict

__all__ = ["secret_app"]

secret_app = typer.Typer(
    help="Secrets for jobs (--secret NAME), kept by the coordinator; values are never shown.",
    no_args_is_help=True,
)


@secret_app.command("set")
def secret_set(
    ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME", help="e.g. OPENAI_API_KEY")]
) -> None:
    """Store a secret; the value is read from stdin (or asked for), never from the command line."""
    o = options(ctx)
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"value for {name}: ")
    else:
        value = sys.stdin.read().rstrip("\r\n")
    reply = o.client().set_secret(name, value)
    if o.json:
        print_json(to_dict(reply))
    else:
        console.print(f"secret {name} set; jobs get it with: flota run --secret {name} ...")


@secret_app.command("list")
def secret_list(ctx: typer.Context) -> None:
    """The names of the stored secrets (values are never shown)."""
    o = options(ctx)
    reply = o.client().list_secrets()
    if o.json:
        print_json(to_dict(reply))
    elif reply.names:
        console.print("\n".join(reply.names))
    else:
        console.print("no secrets stored (flota secret set NAME)")


@secret_app.command("rm")
def secret_rm(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Delete a stored secret."""
    o = options(ctx)
    reply = o.client().delete_secret(name)
    if o.json:
        print_json(to_dict(reply))
    else:
        console.print(f"secret {name} deleted")
