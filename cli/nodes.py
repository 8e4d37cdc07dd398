"""`flota nodes` and `flota node start|drain|remove|join|add|uninstall`: the machines of the fleet.

`node start` and `node join` exec the node daemon's own entry point; `node add` and
`node uninstall` (cli/install/) work over SSH; the others are calls to the coordinator.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.client import CliError
from cli.daemon import exec_daemon
from cli.install.commands import node_add, node_uninstall, node_upgrade
from cli.options import check_address, json_flag, options
from cli.render import console, count, nodes_table, print_json, to_dict
from cli.version import cli_build

__all__ = ["list_nodes", "node_app"]

node_app = typer.Typer(help="Install, join, run and drain node daemons.", no_args_is_help=True)
node_app.command("add")(node_add)
node_app.command("uninstall")(node_uninstall)
node_app.command("upgrade")(node_upgrade)


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
    console.print(nodes_table(reply, cli_build(reply)))


@node_app.command("start")
def node_start(
    ctx: typer.Context,
    listen: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="Where to listen; port 0 picks a free one.")
    ] = "0.0.0.0:7380",
    state_dir: Annotated[
        str | None, typer.Option(metavar="DIR", help="Node state directory (default $FLOTA_HOME/node).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Node name (default: its node.toml).")
    ] = None,
    network: Annotated[
        str | None,
        typer.Option(metavar="PROFILE", help="Declare the network profile (home, vpn, public ...)."),
    ] = None,
    network_rule: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PROFILE=if:GLOB|subnet:CIDR", help="Pick the profile by interface; repeatable."
        ),
    ] = None,
    label: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", help="A label; repeatable.")] = None,
    slots: Annotated[int | None, typer.Option(metavar="N", help="Jobs this node runs at once.")] = None,
    allow_remote: Annotated[
        list[str] | None,
        typer.Option(
            metavar="GLOB", help="Only fetch from / push to repository URLs matching it; repeatable."
        ),
    ] = None,
    agent_cli: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME", help="Also report this agent CLI when it is on PATH; repeatable."),
    ] = None,
    model_server: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL", help="An OpenAI-compatible server here (http://127.0.0.1:PORT/v1); repeatable."
        ),
    ] = None,
    model_slots: Annotated[
        list[int] | None,
        typer.Option(
            metavar="N",
            help="Jobs at once for the --model-server at the same place (default: what it reports, "
            "else 1); repeatable.",
        ),
    ] = None,
    warm_agents: Annotated[
        bool,
        typer.Option("--warm-agents", help="Start the llm agent host now, not at the first llm job."),
    ] = False,
    agent_idle: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS", help="Idle time before the llm agent host exits (0: no host; default 600)."
        ),
    ] = None,
    coordinator: Annotated[
        str | None,
        typer.Option(metavar="HOST:PORT", help="The coordinator's API, if it moved since the join."),
    ] = None,
    heartbeat: Annotated[float | None, typer.Option(metavar="SECONDS", help="Heartbeat period.")] = None,
    unreachable_after: Annotated[
        float | None,
        typer.Option(metavar="SECONDS", help="Silence before the coordinator says unreachable (default 3)."),
    ] = None,
    lost_after: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Silence before the coordinator gives this node's jobs up (default 30; a laptop "
            "that sleeps may want more).",
        ),
    ] = None,
    stop_after_disconnect: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Cut off this long, stop the jobs and push their work (0: never; default 600).",
        ),
    ] = None,
    no_mdns: Annotated[bool, typer.Option("--no-mdns", help="Do not announce on mDNS.")] = False,
    dial_home: Annotated[
        bool,
        typer.Option(
            "--dial-home",
            help="Open the link to the coordinator from here (behind NAT); announce no address to dial.",
        ),
    ] = False,
) -> None:
    """Run the node daemon in the foreground."""
    args = ["start", "--listen", check_address(listen, "--listen", 7380)]
    if coordinator is not None:
        args += ["--coordinator", check_address(coordinator, "--coordinator", 7370)]
    for flag, value in (
        ("--state-dir", state_dir),
        ("--name", name),
        ("--network", network),
        ("--slots", slots),
        ("--heartbeat", heartbeat),
        ("--unreachable-after", unreachable_after),
        ("--lost-after", lost_after),
        ("--stop-after-disconnect", stop_after_disconnect),
        ("--agent-idle", agent_idle),
    ):
        if value is not None:
            args += [flag, str(value)]
    for flag, values in (
        ("--network-rule", network_rule),
        ("--label", label),
        ("--allow-remote", allow_remote),
        ("--agent-cli", agent_cli),
        ("--model-server", model_server),
        ("--model-slots", model_slots),
    ):
        for item in values or []:
            args += [flag, str(item)]
    if no_mdns:
        args.append("--no-mdns")
    if dial_home:
        args.append("--dial-home")
    if warm_agents:
        args.append("--warm-agents")
    exec_daemon("node_agent", [*args, *json_flag(ctx)])


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
    address: Annotated[str, typer.Argument(metavar="HOST:PORT", help="The coordinator's join address.")],
    token: Annotated[
        str | None, typer.Option(metavar="TOKEN", help="A token from `flota token create`.")
    ] = None,
    token_stdin: Annotated[
        bool,
        typer.Option("--token-stdin", help="Read the token from standard input (kept out of ps)."),
    ] = False,
    name: Annotated[str | None, typer.Option(metavar="NAME", help="Node name (default: host name).")] = None,
    state_dir: Annotated[str | None, typer.Option(metavar="DIR", help="Node state directory.")] = None,
) -> None:
    """Enroll this machine with a coordinator, once: keeps its key and certificate."""
    if (token is None) == (not token_stdin):
        raise CliError("node join needs one of --token TOKEN or --token-stdin")
    args = ["join", check_address(address, "join address", 7371)]
    args += ["--token-stdin"] if token_stdin else ["--token", str(token)]
    if name:
        args += ["--name", name]
    if state_dir:
        args += ["--state-dir", state_dir]
    exec_daemon("node_agent", [*args, *json_flag(ctx)])
