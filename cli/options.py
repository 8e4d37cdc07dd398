"""The global options (`flota --json --coordinator HOST:PORT ...`) as every command reads them.

`cli/main.py` declares the options and stores an `Options` on the root context; a command
takes it back with `options(ctx)`. Kept apart from main.py so the command modules need not
import the app that registers them.
"""

from __future__ import annotations

from dataclasses import dataclass

import typer

from cli.client import Client

__all__ = ["Options", "json_flag", "options"]


@dataclass
class Options:
    json: bool = False
    coordinator: str | None = None

    def client(self) -> Client:
        return Client(self.coordinator)


def options(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Options) else Options()


def json_flag(ctx: typer.Context) -> list[str]:
    """`--json` again for a daemon we exec: it prints its own JSON lines."""
    return ["--json"] if options(ctx).json else []
