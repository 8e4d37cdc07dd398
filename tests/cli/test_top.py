"""`flota top` (cli/top/) with Textual's pilot, at 80x24, against a real coordinator and
node: the panes fill from the event stream, a new job appears with its live log, and the
keys cancel (the job's process really ends), drain, filter and show a diff."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from textual.widgets import DataTable, RichLog

from cli.client import Client
from cli.top.app import JOB_COLUMNS, TextView, TopApp
from tests.fleet import Fleet, make_repo

pytestmark = pytest.mark.timeout(180)


async def until(pilot: Any, check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    for _ in range(int(timeout / 0.1)):
        got = check()
        if got:
            return got
        await pilot.pause(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def rows(app: TopApp, table_id: str) -> dict[str, list[str]]:
    table = app.query_one(f"#{table_id}", DataTable)
    return {str(k.value): [str(c) for c in table.get_row(k)] for k in table.rows}


def log_text(app: TopApp) -> str:
    return "\n".join("".join(s.text for s in strip) for strip in app.query_one("#log", RichLog).lines)


def marked(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in p.info["cmdline"] or ()):
            found.append(p)
    return found


def test_top_follows_the_fleet_and_its_keys_act(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo", "--slots", "2")
    monkeypatch.setenv("FLOTA_HOME", str(fleet.home))
    work, _ = make_repo(tmp_path)
    marker = f"flota-top-{os.getpid()}"

    async def scenario() -> None:
        app = TopApp(Client, repo=str(work))
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: "solo" in str(rows(app, "nodes")), "the node's row")
            node = next(iter(rows(app, "nodes").values()))
            assert node[:2] == ["solo", "online"], node

            run = await asyncio.to_thread(fleet.json, "run", f"echo hello-top; sleep 60; : {marker}")
            job_id = run["jobs"][0]["id"]
            await until(pilot, lambda: rows(app, "jobs").get(job_id, ["", ""])[1] == "running", "job running")
            assert rows(app, "jobs")[job_id][2] == "solo"
            await until(pilot, lambda: "hello-top" in log_text(app), "the job's log line")

            # At 80 columns, every column but the task fits whole: ids are never cut.
            table = app.query_one("#jobs", DataTable)
            widths = [c.get_render_width(table) for c in table.columns.values()]
            assert sum(widths[: len(JOB_COLUMNS) - 1]) <= 78, widths
            app.save_screenshot(str(tmp_path / "top.svg"))

            await pilot.press("c")
            await pilot.press("y")
            await until(pilot, lambda: rows(app, "jobs")[job_id][1] == "cancelled", "cancelled in the view")
            status = await asyncio.to_thread(fleet.json, "status", job_id)
            assert status["status"] == "cancelled"
            await until(pilot, lambda: not marked(marker), "the job's process gone")

            await pilot.press("d")
            await until(pilot, lambda: rows(app, "nodes")[node_id(app)][1] == "draining", "draining")
            listed = await asyncio.to_thread(fleet.json, "nodes")
            assert listed[0]["state"] == "draining"
            await pilot.press("d")
            await until(pilot, lambda: rows(app, "nodes")[node_id(app)][1] == "online", "undrained")

            done = await asyncio.to_thread(
                fleet.json, "run", "--repo", str(work), "echo changed > top.txt", "--name", "with-diff"
            )
            changed = done["jobs"][0]["id"]
            await until(pilot, lambda: rows(app, "jobs").get(changed, ["", ""])[1] == "success", "diff job")
            await pilot.press("slash")
            await pilot.press(*changed, "enter")
            assert list(rows(app, "jobs")) == [changed]  # the filter keeps just that job
            await pilot.press("v")
            view = await until(pilot, lambda: isinstance(app.screen, TextView) and app.screen, "diff view")
            assert "top.txt" in view.text and "+changed" in view.text, view.text
            await pilot.press("escape")
            await pilot.press("q")

    def node_id(app: TopApp) -> str:
        return next(iter(app.state.nodes))

    asyncio.run(scenario())
