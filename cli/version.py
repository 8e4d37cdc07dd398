"""`flota version`: the CLI's version and each node's, as the coordinator reports them.

The coordinator's API has no field for its own version (ListNodes carries each node's
NodeInfo.version), so the coordinator is listed as reachable, not by version.
"""

from __future__ import annotations

import typer

from cli import __version__
from cli.options import options
from cli.render import console, print_json

__all__ = ["version"]


def version(ctx: typer.Context) -> None:
    """Print the versions of the CLI and of every node the coordinator knows."""
    o = options(ctx)
    nodes = [(n.info.name, n.info.version, n.state) for n in o.client().list_nodes().nodes]
    if o.json:
        print_json(
            {"cli": __version__, "nodes": [{"name": n, "version": v, "state": s} for n, v, s in nodes]}
        )
        return
    console.print(f"cli          {__version__}")
    console.print("coordinator  reachable (its API does not report a version)")
    for name, ver, state in nodes:
        console.print(f"node {name}  {ver or 'unknown'} ({state})", soft_wrap=True)
