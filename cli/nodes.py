"""`flota nodes` and `flota node start|drain|remove|join`: the machines of the fleet.

`node start` and `node join` exec the node daemon's own entry point; the others are calls
to the coordinator.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.daemon import exec_daemon
from cli.options import json_flag, options
from cli.render import console, count, nodes_table, print_json, to_dict

__all__ = ["list_nodes", "node_app"]

node_app = typer.Typer(help="Join, run and drain node daemons.", no_args_is_help=True)


def list_nodes(ctx: typer.Context) -> None:
    """List the nodes: name, address, network, cpu/ram/gpu, load, slots, state."""
    o = options(ctx)
    reply = o.client().list_nodes()
    if o.json:
        print_json(to_dict(reply)["nodes"])
        return
    if not reply.nodes:
        console.print("no nodes yet: `flota token create` prints the command that adds one")
        return
    console.print(nodes_table(reply))


@node_app.command("start", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def node_start(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option(help="HOST:PORT; port 0 picks a free one.")] = "0.0.0.0:7380",
    network: Annotated[
        str | None, typer.Option(help="Declare the network profile (home, vpn, public ...).")
    ] = None,
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    slots: Annotated[int | None, typer.Option(help="Jobs this node runs at once.")] = None,
) -> None:
    """Run the node daemon in the foreground.

    More options: --name N, --state-dir D, --network-rule PROFILE=if:GLOB|subnet:CIDR,
    --coordinator HOST:PORT (if it moved since the join), --heartbeat S, --no-mdns,
    --unreachable-after S and --lost-after S (how long the coordinator waits for this node;
    a laptop that sleeps may want more), --stop-after-disconnect S (cut off this long, the
    node stops its jobs and pushes their work; 0: never; default 600).
    """
    args = ["start", "--listen", listen]
    if network:
        args += ["--network", network]
    for item in label or []:
        args += ["--label", item]
    if slots is not None:
        args += ["--slots", str(slots)]
    exec_daemon("node_agent", [*args, *json_flag(ctx), *ctx.args])


@node_app.command("drain")
def node_drain(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(metavar="NODE", help="Node name or id.")],
    undo: Annotated[bool, typer.Option("--undo", help="Take new jobs again.")] = False,
) -> None:
    """Stop placing new jobs on a node; the jobs running there finish."""
    o = options(ctx)
    status = o.client().drain_node(node, undo)
    if o.json:
        print_json(to_dict(status))
        return
    running = status.info.running
    if undo:
        console.print(f"node {status.info.name}: takes new jobs again ({status.state})")
    else:
        console.print(
            f"node {status.info.name}: draining; no new jobs, {count(running, 'running job')} will finish"
            f" (undo: flota node drain {status.info.name} --undo)"
        )


@node_app.command("remove")
def node_remove(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(metavar="NODE", help="Node name or id.")],
) -> None:
    """Revoke a node: its certificate is refused from now on; its running jobs are retried elsewhere."""
    o = options(ctx)
    reply = o.client().remove_node(node)
    if o.json:
        print_json(to_dict(reply))
        return
    moved = len(reply.attempts_given_up)
    console.print(
        f"node {reply.name} ({reply.id}) removed: its certificate is refused from now on"
        + (f"; {count(moved, 'running job')} given up and retried elsewhere if allowed" if moved else "")
        + ". To add the machine again: flota token create, then flota node join on it."
    )


@node_app.command("join")
def node_join(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="The coordinator's join address HOST:PORT.")],
    token: Annotated[str, typer.Option(help="A token from `flota token create`.")],
    name: Annotated[str | None, typer.Option(help="Node name (default: host name).")] = None,
    state_dir: Annotated[str | None, typer.Option(help="Node state directory.")] = None,
) -> None:
    """Enroll this machine with a coordinator, once: keeps its key and certificate."""
    args = ["join", address, "--token", token]
    if name:
        args += ["--name", name]
    if state_dir:
        args += ["--state-dir", state_dir]
    exec_daemon("node_agent", [*args, *json_flag(ctx)])
