"""`flota mcp` through the mcp SDK's own stdio client, against real daemons: the tools
listed, a run submitted through a tool reaching success on the fleet, its results read
back through another tool, a refused call as the tool's error."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from protos.contract import RUN_ACTIVE
from tests.fleet import ROOT, Fleet, git, make_repo

TOOLS = {"list_nodes", "submit_run", "run_status", "job_log", "results", "compare", "merge", "cancel"}


def _params(fleet: Fleet) -> StdioServerParameters:
    env = {**os.environ, "FLOTA_HOME": str(fleet.home), "PYTHONPATH": str(ROOT)}
    return StdioServerParameters(
        command=sys.executable, args=["-m", "cli", "mcp"], env=env, cwd=str(fleet.home)
    )


def _data(result: Any) -> Any:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        data = result.structured_content
        return data.get("result", data) if isinstance(data, dict) and set(data) == {"result"} else data
    return json.loads(result.content[0].text)


async def _session(fleet: Fleet, work: Path) -> dict[str, Any]:
    async with stdio_client(_params(fleet)) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = {t.name for t in (await session.list_tools()).tools}
        nodes = _data(await session.call_tool("list_nodes", {}))
        run = _data(await session.call_tool("submit_run", {"tasks": ["echo hi > hi.txt"], "repo": str(work)}))
        deadline = time.monotonic() + 120
        status = run
        while status["status"] in RUN_ACTIVE and time.monotonic() < deadline:
            await anyio.sleep(0.2)
            status = _data(await session.call_tool("run_status", {"run_id": run["id"]}))
        results = _data(await session.call_tool("results", {"run_id": run["id"]}))
        log = await session.call_tool("job_log", {"job_id": results[0]["id"]})
        refused = await session.call_tool("run_status", {"run_id": "run-nope"})
        return {
            "tools": tools,
            "nodes": nodes,
            "status": status,
            "results": results,
            "log": log,
            "refused": refused,
        }


def test_a_run_submitted_through_a_tool_succeeds_and_its_results_come_back(
    fleet: Fleet, tmp_path: Path
) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    work, remote = make_repo(tmp_path / "repo")
    got = anyio.run(_session, fleet, work)
    assert got["tools"] == TOOLS
    assert [n["name"] for n in got["nodes"]] == ["solo"]
    assert got["status"]["status"] == "success"
    (job,) = got["results"]
    assert job["status"] == "success" and job["node"] == "solo" and job["files_modified"] == ["hi.txt"]
    assert git("show", f"{job['branch']}:hi.txt", cwd=remote) == "hi\n"
    assert not got["log"].is_error
    assert got["refused"].is_error and "run-nope" in got["refused"].content[0].text
