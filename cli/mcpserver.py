"""`flota mcp`: flota as tools for an orchestrating agent, a Model Context Protocol server
on stdio (the `mcp` SDK).

Each tool is one or a few calls of the coordinator's API through the CLI's own client
(the same admin certificate, the same limits and checks as `flota ...`); nothing runs on
this machine: jobs, merges and checks run on the fleet's nodes. A refused call comes back
as the tool's error, one line, as the CLI would print it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from cli.client import Client, CliError
from cli.options import options
from cli.render import compare_rows, to_dict
from protos.flota.v1 import coordinator_pb2, types_pb2

__all__ = ["build_server", "mcp"]

_T = TypeVar("_T")
_LOG_LINES = 200


def _job(j: coordinator_pb2.Job) -> dict[str, Any]:
    r = j.result
    return {
        "id": j.id,
        "name": j.name,
        "status": j.status,
        "agent": j.agent or "shell",
        "model": j.model,
        "node": j.node_name,
        "wait_reason": j.wait_reason,
        "depends_on": list(j.depends_on),
        "role": j.role,
        "branch": r.branch,
        "head_commit": r.head_commit,
        "check": r.check,
        "error": r.error,
        "steps": r.steps,
        "tokens": r.tokens_in + r.tokens_out,
        "cost_usd": r.cost_usd,
        "duration_s": r.duration_s,
        "files_modified": list(r.files_modified),
        "answer": r.answer,
    }


def _run(run: coordinator_pb2.Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "repo_url": run.repo_url,
        "base_commit": run.base_commit,
        "jobs": [_job(j) for j in run.jobs],
    }


def build_server(client_for: Callable[[], Client]) -> Any:
    """The MCP server and its tools, over the coordinator client ``client_for`` makes."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("flota", instructions="Run AI-agent and shell jobs on a fleet of machines.")
    client: list[Client] = []

    def call(fn: Callable[[Client], _T]) -> _T:
        if not client:
            client.append(client_for())
        try:
            return fn(client[0])
        except CliError as exc:
            raise ToolError(str(exc)) from None

    @server.tool()
    def list_nodes() -> list[dict[str, Any]]:
        """The fleet's machines: name, state, network, slots, facts, labels."""
        reply = call(lambda c: c.list_nodes())
        return [{"name": n.info.name, "state": n.state, **to_dict(n)} for n in reply.nodes]

    @server.tool()
    def submit_run(  # noqa: PLR0913
        tasks: list[str],
        agent: str = "shell",
        models: list[str] | None = None,
        repo: str = "",
        ref: str = "",
        check: str = "",
        budget_per_worker_usd: float = 0.0,
        max_steps: int = 0,
        api_base: str = "",
        node: str = "",
        labels: dict[str, str] | None = None,
        networks: list[str] | None = None,
        spread: bool = False,
        timeout_s: float = 0.0,
        name: str = "",
    ) -> dict[str, Any]:
        """Submit a run: each task (a shell command, or a prompt for an agent) on each model,
        placed on the fleet (a node, labels, networks, spread), each job on its own branch
        of `repo` (a repository on the coordinator's machine) when given."""
        from cli.agents import TEMPLATES, fan_out, load_repo_config

        def submit(c: Client) -> coordinator_pb2.Run:
            config = load_repo_config(Path(repo or ".").resolve())
            specs = fan_out(agent, tasks, models or [], 0, {**TEMPLATES, **config.agents})
            request = coordinator_pb2.SubmitRunRequest(
                tasks=specs,
                check=check,
                budget_usd=budget_per_worker_usd,
                max_steps=max_steps,
                api_base=api_base,
                timeout_s=timeout_s,
                retries=-1,
                name=name,
                placement=coordinator_pb2.PlacementSpec(
                    node=node,
                    labels=labels or {},
                    networks=networks or [],
                    spread=spread,
                    resources=types_pb2.Resources(),
                ),  # fmt: skip
            )
            if repo:
                request.repo.CopyFrom(coordinator_pb2.RepoRequest(path=str(Path(repo).resolve()), ref=ref))
            return c.submit_run(request)

        return _run(call(submit))

    @server.tool()
    def run_status(run_id: str) -> dict[str, Any]:
        """A run (or, given a job id, the run of that job) and each job's state."""
        return _run(call(lambda c: c.get_run(run_id)))

    @server.tool()
    def results(run_id: str) -> list[dict[str, Any]]:
        """Each job's result: status, branch, head commit, check, cost, tokens, answer."""
        return [_job(j) for j in call(lambda c: c.get_run(run_id)).jobs]

    @server.tool()
    def compare(run_id: str) -> list[dict[str, Any]]:
        """The run's jobs ranked as a competition (flota compare), best first."""
        return compare_rows(call(lambda c: c.get_run(run_id)))

    @server.tool()
    def job_log(job_id: str, lines: int = 50) -> str:
        """The last lines of a job's output (at most 200)."""

        def tail(c: Client) -> str:
            chunks = [line for chunk in c.stream_logs(job_id, follow=False) for line in chunk.lines]
            return "\n".join(chunks[-max(1, min(lines, _LOG_LINES)) :])

        return call(tail)

    @server.tool()
    def merge(  # noqa: PLR0913
        run_id: str,
        repo: str = ".",
        check: str = "",
        pick: list[str] | None = None,
        fix_with: str = "",
        max_fix_rounds: int = 1,
        api_base: str = "",
        pr: bool = False,
    ) -> dict[str, Any]:
        """Merge the run's branches into flota/RUN/merged through a merge queue that runs as
        a job on the fleet, the check after each; evicted branches with their reasons; the
        pull request's description (and with pr, the pull request)."""
        from cli.merge.command import fixer, merge_run
        from cli.merge.engine import FixSpec

        def run_it(c: Client) -> dict[str, Any]:
            fix = (
                FixSpec(fixer(fix_with, Path(repo).resolve()), max_fix_rounds, api_base) if fix_with else None
            )
            return merge_run(
                c, run_id, Path(repo), check=check, picks=pick or [], fix=fix,
                max_fix_rounds=max_fix_rounds, pr=pr,
            )  # fmt: skip

        return call(run_it)

    @server.tool()
    def cancel(ident: str) -> dict[str, Any]:
        """Cancel a run or a job."""
        return to_dict(call(lambda c: c.cancel(ident)))

    return server


def mcp(ctx: typer.Context) -> None:
    """Serve flota's tools to an agent over MCP (stdio): nodes, runs, logs, results, merge."""
    o = options(ctx)
    o.address()  # a bad --coordinator: its one line before the server starts
    build_server(o.client).run("stdio")
