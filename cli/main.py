"""`flota`: the command line. Talks to the coordinator over gRPC only; the daemons are
started by exec'ing their own entry points (`python -m coordinator|node_agent`).

Exit codes: 0 ok, 1 a run or job did not succeed, 2 bad input or refused request,
3 coordinator unreachable.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.client import EXIT_FAILED, Client, CliError
from cli.local import daemon_env
from cli.render import (
    compare_rows,
    compare_table,
    console,
    jobs_table,
    nodes_table,
    print_json,
    results_table,
    runs_table,
    to_dict,
)
from protos.contract import flota_home
from protos.flota.v1 import coordinator_pb2, types_pb2

__all__ = ["app", "main"]

app = typer.Typer(
    name="flota",
    help="Turn the machines you own into one fleet: jobs run in parallel, each on its own git branch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
coordinator_app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)
node_app = typer.Typer(help="Join, run and drain node daemons.", no_args_is_help=True)
token_app = typer.Typer(help="Join tokens for new nodes.", no_args_is_help=True)
secret_app = typer.Typer(
    help="Secrets for jobs (--secret NAME), kept by the coordinator; values are never shown.",
    no_args_is_help=True,
)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(node_app, name="node")
app.add_typer(token_app, name="token")
app.add_typer(secret_app, name="secret")


@dataclass
class Options:
    json: bool = False
    coordinator: str | None = None

    def client(self) -> Client:
        return Client(self.coordinator)


@app.callback()
def _global(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON (shapes in docs/cli.md).")] = False,
    coordinator: Annotated[
        str | None, typer.Option("--coordinator", help="Coordinator HOST:PORT (or $FLOTA_COORDINATOR).")
    ] = None,
) -> None:
    ctx.obj = Options(json_output, coordinator)


def _opts(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Options) else Options()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _json_flag(ctx: typer.Context) -> list[str]:
    return ["--json"] if _opts(ctx).json else []


def _exec(module: str, args: list[str]) -> None:
    """Replace this process with a daemon's own entry point."""
    argv = [sys.executable, "-m", module, *args]
    sys.stdout.flush()
    os.execve(sys.executable, argv, daemon_env())


# --- daemons ------------------------------------------------------------------------------


@coordinator_app.command("start", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def coordinator_start(
    ctx: typer.Context,
    listen: Annotated[
        str, typer.Option(help="HOST:PORT of the API; port 0 picks a free one.")
    ] = "0.0.0.0:7370",
) -> None:
    """Run the coordinator in the foreground (creates its CA on first start).

    More options: --join-port N, --advertise HOST, --no-mdns, --lost-after S.
    """
    _exec("coordinator", ["start", "--listen", listen, *_json_flag(ctx), *ctx.args])


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
    _exec("node_agent", [*args, *_json_flag(ctx), *ctx.args])


@node_app.command("drain")
def node_drain(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(metavar="NODE", help="Node name or id.")],
    undo: Annotated[bool, typer.Option("--undo", help="Take new jobs again.")] = False,
) -> None:
    """Stop placing new jobs on a node; the jobs running there finish."""
    o = _opts(ctx)
    status = o.client().call("DrainNode", coordinator_pb2.DrainNodeRequest(node=node, undo=undo))
    if o.json:
        print_json(to_dict(status))
        return
    running = status.info.running
    if undo:
        console.print(f"node {status.info.name}: takes new jobs again ({status.state})")
    else:
        console.print(
            f"node {status.info.name}: draining; no new jobs, {_count(running, 'running job')} will finish"
            f" (undo: flota node drain {status.info.name} --undo)"
        )


@secret_app.command("set")
def secret_set(
    ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME", help="e.g. OPENAI_API_KEY")]
) -> None:
    """Store a secret; the value is read from stdin (or asked for), never from the command line."""
    o = _opts(ctx)
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"value for {name}: ")
    else:
        value = sys.stdin.read().rstrip("\r\n")
    reply = o.client().call("SetSecret", coordinator_pb2.SetSecretRequest(name=name, value=value))
    if o.json:
        print_json(to_dict(reply))
    else:
        console.print(f"secret {name} set; jobs get it with: flota run --secret {name} ...")


@secret_app.command("list")
def secret_list(ctx: typer.Context) -> None:
    """The names of the stored secrets (values are never shown)."""
    o = _opts(ctx)
    reply = o.client().call("ListSecrets", coordinator_pb2.ListSecretsRequest())
    if o.json:
        print_json(to_dict(reply))
    elif reply.names:
        console.print("\n".join(reply.names))
    else:
        console.print("no secrets stored (flota secret set NAME)")


@secret_app.command("rm")
def secret_rm(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Delete a stored secret."""
    o = _opts(ctx)
    reply = o.client().call("DeleteSecret", coordinator_pb2.DeleteSecretRequest(name=name))
    if o.json:
        print_json(to_dict(reply))
    else:
        console.print(f"secret {name} deleted")


@node_app.command("remove")
def node_remove(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(metavar="NODE", help="Node name or id.")],
) -> None:
    """Revoke a node: its certificate is refused from now on; its running jobs are retried elsewhere."""
    o = _opts(ctx)
    reply = o.client().call("RemoveNode", coordinator_pb2.RemoveNodeRequest(node=node))
    if o.json:
        print_json(to_dict(reply))
        return
    moved = len(reply.attempts_given_up)
    console.print(
        f"node {reply.name} ({reply.id}) removed: its certificate is refused from now on"
        + (f"; {_count(moved, 'running job')} given up and retried elsewhere if allowed" if moved else "")
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
    _exec("node_agent", [*args, *_json_flag(ctx)])


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    ttl: Annotated[float, typer.Option(help="Lifetime in seconds.")] = 900,
) -> None:
    """Make a one-time join token and print the command that uses it."""
    o = _opts(ctx)
    reply = o.client().call("CreateToken", coordinator_pb2.CreateTokenRequest(ttl_s=ttl))
    if o.json:
        print_json(to_dict(reply))
        return
    console.print(f"flota node join {reply.join_address} --token {reply.token}", soft_wrap=True)


# --- fleet --------------------------------------------------------------------------------


@app.command("nodes")
def nodes(ctx: typer.Context) -> None:
    """List the nodes: name, address, network, cpu/ram/gpu, load, slots, state."""
    o = _opts(ctx)
    reply = o.client().call("ListNodes", coordinator_pb2.ListNodesRequest())
    if o.json:
        print_json(to_dict(reply)["nodes"])
        return
    if not reply.nodes:
        console.print("no nodes yet: `flota token create` prints the command that adds one")
        return
    console.print(nodes_table(reply))


def _parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"invalid {what} {item!r} (expected KEY=VALUE)")
        pairs[key] = value
    return pairs


@app.command("run")
def run(
    ctx: typer.Context,
    command: Annotated[
        str | None,
        typer.Argument(help="A task: a shell command, or a prompt for an agent (or use --task, repeatable)."),
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option("--task", "-t", help="A task (command or prompt); repeatable.")
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            help="shell (default), llm, or an agent CLI: claude, aider, codex, gemini, architect, ..."
        ),
    ] = None,
    model: Annotated[list[str] | None, typer.Option(help="A model (litellm string); repeatable.")] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models: one job per model, on different machines.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Jobs to run; tasks and models are dealt round-robin.")
    ] = None,
    budget_per_worker: Annotated[float | None, typer.Option(help="USD budget of each llm job.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Model calls allowed per llm job.")] = None,
    check: Annotated[
        str | None, typer.Option(help="A command run in the worktree after the agent; pass/fail is recorded.")
    ] = None,
    api_base: Annotated[
        str | None, typer.Option(help="An OpenAI-compatible server for the llm agent (http://host:port/v1).")
    ] = None,
    repo: Annotated[str | None, typer.Option(help="Git repository the tasks work on.")] = None,
    remote: Annotated[str, typer.Option(help="Remote name or URL the nodes use.")] = "origin",
    ref: Annotated[str, typer.Option(help="Base revision.")] = "HEAD",
    from_working_tree: Annotated[
        bool,
        typer.Option(
            help="Base on the working tree: uncommitted changes and untracked files not in .gitignore."
        ),
    ] = False,
    on: Annotated[str | None, typer.Option("--on", help="Pin to a node (name or id).")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Required node label KEY=VALUE; repeatable.")
    ] = None,
    network: Annotated[list[str] | None, typer.Option(help="Allowed network profile; repeatable.")] = None,
    avoid_network: Annotated[
        list[str] | None, typer.Option(help="Network profile to avoid; repeatable.")
    ] = None,
    exclusive: Annotated[bool, typer.Option(help="Nothing else runs on the node meanwhile.")] = False,
    spread: Annotated[
        bool, typer.Option(help="At most one of this run's tasks on a node at a time (hard).")
    ] = False,
    cpus: Annotated[float, typer.Option(help="CPUs each task needs.")] = 0,
    memory: Annotated[int, typer.Option(help="Memory each task needs, MB.")] = 0,
    gpus: Annotated[int, typer.Option(help="GPUs each task needs.")] = 0,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", "--timeout-per-worker", help="Seconds before a task is stopped (0: none)."),
    ] = None,
    retries: Annotated[
        int,
        typer.Option(
            help="Extra attempts when a node is lost or stops a task cut off (default 1; -1: the default)."
        ),
    ] = -1,
    resume_from_partial: Annotated[
        bool, typer.Option(help="A retry starts from the work an earlier attempt pushed.")
    ] = False,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the tasks; repeatable.")] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME of a secret (flota secret set, or the coordinator's environment) for the tasks' "
            "environment; redacted from logs and results. Repeatable."
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="A name for the run.")] = "",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Show progress, then the results.")] = False,
) -> None:
    """Run tasks on the fleet, each on its own branch when --repo is given."""
    o = _opts(ctx)
    texts = ([command] if command else []) + list(task or [])
    if not texts:
        raise CliError("nothing to run: give a command or --task")
    from cli.agents import TEMPLATES, fan_out, load_repo_config

    config = load_repo_config(Path(repo or ".").resolve())
    defaults = config.run
    agent = agent or defaults.get("agent") or "shell"
    model_list = list(model or []) + [m.strip() for m in (models or "").split(",") if m.strip()]
    model_list = model_list or list(defaults.get("models", []))
    if workers is None:
        workers = int(defaults.get("workers", 0))
    if workers < 0 or workers > 1000:
        raise CliError("--workers must be between 1 and 1000")
    network = network or list(defaults.get("networks", []))
    timeout = timeout if timeout is not None else float(defaults.get("timeout_per_worker", 0))
    tasks = fan_out(agent, texts, model_list, workers, {**TEMPLATES, **config.agents})
    request = coordinator_pb2.SubmitRunRequest(
        tasks=tasks,
        max_steps=max_steps if max_steps is not None else int(defaults.get("max_steps", 0)),
        budget_usd=budget_per_worker
        if budget_per_worker is not None
        else float(defaults.get("budget_per_worker", 0)),
        check=check if check is not None else str(defaults.get("check", "")),
        api_base=api_base or "",
        placement=coordinator_pb2.PlacementSpec(
            node=on or "",
            labels=_parse_pairs(label, "label"),
            networks=network or [],
            avoid_networks=avoid_network or [],
            exclusive=exclusive,
            spread=spread,
            resources=types_pb2.Resources(cpus=cpus, memory_mb=memory, gpus=gpus),
        ),
        timeout_s=timeout,
        retries=retries,
        resume_from_partial=resume_from_partial,
        secrets=secret or [],
        name=name,
        env=_parse_pairs(env, "environment variable"),
    )
    if repo:
        path = os.path.abspath(repo)
        if not os.path.isdir(path):
            raise CliError(f"no such directory: {repo}")
        request.repo.CopyFrom(
            coordinator_pb2.RepoRequest(
                path=path, remote=remote, ref=ref, from_working_tree=from_working_tree
            )
        )
    client = o.client()
    submitted = client.call("SubmitRun", request, timeout=120)
    if not follow:
        if o.json:
            print_json(to_dict(submitted))
        else:
            queued = _count(len(submitted.jobs), "job")
            console.print(f"run {submitted.id}: {queued} queued (see: flota status {submitted.id})")
        return
    from cli.follow import follow_run

    if not o.json:
        console.print(
            f"run {submitted.id}: {_count(len(submitted.jobs), 'job')} (Ctrl-C stops watching, not the run)"
        )
    try:
        final = follow_run(client, submitted, live=not o.json and console.is_terminal, quiet=o.json)
    except KeyboardInterrupt:
        print(
            f"flota: stopped watching; run {submitted.id} goes on (flota status {submitted.id}, "
            f"flota cancel {submitted.id})",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    except CliError as exc:
        raise CliError(
            f"{exc}; run {submitted.id} was submitted (flota status {submitted.id})", exc.code
        ) from None
    if o.json:
        print_json(to_dict(final))
    else:
        console.print(results_table(final))
    if final.status != "success":
        raise typer.Exit(EXIT_FAILED)


@app.command("status")
def status(
    ctx: typer.Context,
    ident: Annotated[
        str | None, typer.Argument(metavar="[RUN|JOB]", help="A run or job id; none: recent runs.")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many recent runs to list.")] = 20,
) -> None:
    """Show recent runs, one run and its jobs, or one job and its attempts."""
    o = _opts(ctx)
    client = o.client()
    if ident is None:
        runs = client.call("ListRuns", coordinator_pb2.ListRunsRequest(limit=limit)).runs
        if o.json:
            print_json([to_dict(r) for r in runs])
        else:
            console.print(runs_table(list(runs)) if runs else "no runs yet")
        return
    if "." in ident:
        job = client.call("GetJob", coordinator_pb2.GetJobRequest(job_id=ident))
        if o.json:
            print_json(to_dict(job))
            return
        console.print(f"job {job.id}  {job.status}  {job.name}")
        if job.wait_reason and job.status == "queued":
            console.print(f"waiting: {job.wait_reason}")
        for a in job.attempts:
            console.print(
                f"  attempt {a.number} on {a.node_name or a.node_id}: {a.status} {a.branch} {a.error}"
            )
        return
    run_msg = client.call("GetRun", coordinator_pb2.GetRunRequest(run_id=ident))
    if o.json:
        print_json(to_dict(run_msg))
        return
    console.print(f"run {run_msg.id}  {run_msg.status}")
    console.print(jobs_table(run_msg))


@app.command("results")
def results(ctx: typer.Context, run_id: Annotated[str, typer.Argument(metavar="RUN")]) -> None:
    """The results of a run: node, branch, status, duration, files modified."""
    o = _opts(ctx)
    run_msg = o.client().call("GetRun", coordinator_pb2.GetRunRequest(run_id=run_id))
    if o.json:
        print_json([{"job": j.id, "node": j.node_name, **to_dict(j.result)} for j in run_msg.jobs])
    else:
        console.print(results_table(run_msg))
    if run_msg.status != "success":
        raise typer.Exit(EXIT_FAILED)


@app.command("compare")
def compare(ctx: typer.Context, run_id: Annotated[str, typer.Argument(metavar="RUN")]) -> None:
    """Rank a run's jobs as a competition: check, status, cost, duration, diff size."""
    o = _opts(ctx)
    run_msg = o.client().call("GetRun", coordinator_pb2.GetRunRequest(run_id=run_id))
    rows = compare_rows(run_msg)
    if o.json:
        print_json(rows)
    else:
        console.print(compare_table(rows))


@app.command("logs")
def logs(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print a job's output (all attempts)."""
    o = _opts(ctx)
    attempt = ""
    for chunk in o.client().stream(
        "StreamLogs", coordinator_pb2.StreamLogsRequest(job_id=job_id, follow=follow), None if follow else 120
    ):
        if o.json:
            for line in chunk.lines:
                print(json.dumps({"attempt_id": chunk.attempt_id, "line": line}), flush=True)
            continue
        if attempt and chunk.attempt_id != attempt:  # a retry: say where the next try starts
            sys.stderr.write(f"--- {chunk.attempt_id} ---\n")
        attempt = chunk.attempt_id
        sys.stdout.write("".join(line + "\n" for line in chunk.lines))
        sys.stdout.flush()


@app.command("cancel")
def cancel(ctx: typer.Context, ident: Annotated[str, typer.Argument(metavar="RUN|JOB")]) -> None:
    """Cancel a run or one job: its processes get SIGTERM, then SIGKILL."""
    o = _opts(ctx)
    reply = o.client().call("Cancel", coordinator_pb2.CancelRequest(id=ident))
    if o.json:
        print_json(to_dict(reply))
    else:
        if reply.cancelled:
            console.print(f"cancelled {_count(len(reply.cancelled), 'job')}: {' '.join(reply.cancelled)}")
        else:
            console.print("nothing to cancel: it has already ended")


@app.command("cleanup")
def cleanup(ctx: typer.Context, run_id: Annotated[str, typer.Argument(metavar="RUN")]) -> None:
    """Remove a run's worktrees on the nodes. Result branches are kept."""
    o = _opts(ctx)
    reply = o.client().call("Cleanup", coordinator_pb2.CleanupRequest(run_id=run_id), timeout=120)
    if o.json:
        print_json(to_dict(reply))
        return
    console.print(f"removed {_count(reply.worktrees_removed, 'worktree')}; branches kept")
    if reply.nodes_unreachable:
        console.print(f"unreachable, not cleaned: {', '.join(reply.nodes_unreachable)}")
        raise typer.Exit(EXIT_FAILED)


@app.command("doctor")
def doctor(
    ctx: typer.Context,
    state_dir: Annotated[
        list[Path] | None, typer.Option(help="Also check this node state directory; repeatable.")
    ] = None,
) -> None:
    """Check the security posture of the coordinator and nodes kept on this machine."""
    from cli.doctor import diagnose

    o = _opts(ctx)
    checks = diagnose(flota_home(), list(state_dir or []))
    if o.json:
        print_json([c.to_dict() for c in checks])
    elif not checks:
        console.print(f"nothing to check: no coordinator or node state under {flota_home()}")
    else:
        for c in checks:
            console.print(
                f"{c.status:<4}  {c.where}: {c.check}: {c.detail}"
                + (f"\n      fix: {c.fix}" if c.fix else "")
            )
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(EXIT_FAILED)


@app.command("up")
def up(
    ctx: typer.Context,
    local: Annotated[int, typer.Option("--local", help="Start a one-machine fleet of N nodes (1 to 32).")],
    detach: Annotated[
        bool, typer.Option(help="Return once the fleet is up (stop it with `flota down`).")
    ] = False,
) -> None:
    """Start a local fleet: a coordinator plus N node daemons on this machine."""
    if not 1 <= local <= 32:
        raise CliError("give the number of local nodes: flota up --local 3 (1 to 32)")
    from cli.local import up_local

    up_local(local, detach=detach, as_json=_opts(ctx).json)


@app.command("down")
def down(ctx: typer.Context) -> None:
    """Stop the local fleet started by `flota up --local N --detach`."""
    from cli.local import down_local

    down_local(as_json=_opts(ctx).json)


def _json_first(argv: list[str]) -> list[str]:
    """`--json` is global; accept it after the command too (`flota status --json`)."""
    end = argv.index("--") if "--" in argv else len(argv)
    if "--json" not in argv[1:end]:
        return argv
    return ["--json", *[a for a in argv[:end] if a != "--json"], *argv[end:]]


def main(argv: list[str] | None = None) -> Any:
    try:
        return app(args=_json_first(sys.argv[1:] if argv is None else argv), standalone_mode=True)
    except CliError as exc:
        print(f"flota: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        sys.exit(130)
