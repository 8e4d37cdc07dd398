"""`flota top`: the terminal UI of who runs what on every machine (Textual), fed by the
fleet's event stream (StreamEvents) like the dashboard and `flota events`."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.options import options

__all__ = ["top"]


def top(
    ctx: typer.Context,
    repo: Annotated[
        str | None, typer.Option(help="Where `v` (a job's diff) runs git (default: the current directory).")
    ] = None,
) -> None:
    """A live view of the fleet: nodes, jobs, the selected job's log. Keys: c cancel, r retry,
    d drain/undrain, v diff, / filter, tab next pane, q quit."""
    from cli.top.app import TopApp  # Textual is imported only for this command

    o = options(ctx)
    o.client().close()  # a bad address or missing credentials: one line now, before the screen
    TopApp(o.client, repo).run()
