"""`flota version`: the versions and wire protocols of the CLI, the coordinator and every
node it knows (ListNodes carries the coordinator's and each node's NodeInfo)."""

from __future__ import annotations

import typer

from cli import __version__
from cli.options import options
from cli.render import console, print_json
from protos.contract import PROTOCOL, node_protocol

__all__ = ["version"]


def version(ctx: typer.Context) -> None:
    """Print the versions and protocols of the CLI, the coordinator and every node."""
    o = options(ctx)
    reply = o.client().list_nodes()
    nodes = [
        {
            "name": n.info.name,
            "version": n.info.version,
            "protocol": node_protocol(n.info.protocol),
            "state": n.state,
            "refused": n.refused,
        }
        for n in reply.nodes
    ]
    coordinator = {
        "version": reply.coordinator_version,
        "protocol": reply.protocol,
        "oldest_protocol": reply.oldest_protocol,
    }
    if o.json:
        print_json({"cli": __version__, "protocol": PROTOCOL, "coordinator": coordinator, "nodes": nodes})
        return
    console.print(f"cli          {__version__} (protocol {PROTOCOL})")
    if reply.coordinator_version:
        takes = f"takes nodes speaking {reply.oldest_protocol} to {reply.protocol}"
        console.print(f"coordinator  {reply.coordinator_version} (protocol {reply.protocol}; {takes})")
    else:  # an older coordinator: its reply has no version
        console.print("coordinator  older than 0.1.0 (it does not report its version)")
    for n in nodes:
        state = "refused: upgrade one side" if n["refused"] else n["state"]
        line = f"node {n['name']}  {n['version'] or 'unknown'} (protocol {n['protocol']}, {state})"
        console.print(line, soft_wrap=True)
