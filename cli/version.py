"""`flota version`: the versions and wire protocols of the CLI, the coordinator and every
node it knows (ListNodes carries the coordinator's and each node's NodeInfo)."""

from __future__ import annotations

import typer

from cli import __version__
from cli.install.wheelhouse import local_build
from cli.options import options
from cli.render import console, node_version, print_json
from protos.contract import PROTOCOL, node_protocol
from protos.flota.v1 import coordinator_pb2

__all__ = ["cli_build", "version"]


def cli_build(reply: coordinator_pb2.ListNodesReply) -> str:
    """The build this CLI would install, when a node runs a build of its version (only
    then is it worth hashing the source): a node of another build shows it beside its
    version."""
    if any(n.info.version == __version__ and n.info.build for n in reply.nodes):
        return local_build()
    return ""


def version(ctx: typer.Context) -> None:
    """Print the versions and protocols of the CLI, the coordinator and every node."""
    o = options(ctx)
    reply = o.client().list_nodes()
    build = cli_build(reply)
    nodes = [
        {
            "name": n.info.name,
            "version": n.info.version,
            "build": n.info.build,
            "shown": node_version(n.info, build),
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
        for n in nodes:
            del n["shown"]
        cli = {"cli": __version__, "build": build or local_build(), "protocol": PROTOCOL}
        print_json(cli | {"coordinator": coordinator, "nodes": nodes})
        return
    console.print(f"cli          {__version__} (protocol {PROTOCOL})")
    if reply.coordinator_version:
        takes = f"takes nodes speaking {reply.oldest_protocol} to {reply.protocol}"
        console.print(f"coordinator  {reply.coordinator_version} (protocol {reply.protocol}; {takes})")
    else:  # an older coordinator: its reply has no version
        console.print("coordinator  older than 0.1.0 (it does not report its version)")
    for n in nodes:
        state = "refused: upgrade one side" if n["refused"] else n["state"]
        line = f"node {n['name']}  {n['shown'] or 'unknown'} (protocol {n['protocol']}, {state})"
        console.print(line, soft_wrap=True)
