"""`flota dashboard` in a real browser (Debian's chromium, headless, through Playwright)
against a real fleet: the token, the live views, the log and the diff, the actions, and
a browser console without errors. Screenshots go to the `dashboard-screenshots` tmp dir.

The fleet is one for the whole package (tests/dashboard/conftest.py): each test submits
its own runs and leaves the nodes as it found them.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
from playwright.sync_api import expect

from tests.dashboard.conftest import Dashboard, Page
from tests.fleet import Fleet, make_repo, wait_until

pytestmark = pytest.mark.timeout(240)

LIVE_S = 15_000  # ms the page gets to show what the fleet did (a second, on an idle machine)


def _run(fleet: Fleet, *args: str) -> dict[str, Any]:
    run = fleet.json("run", *args)
    assert "id" in run, run
    return run


def _status(fleet: Fleet, run_id: str) -> str:
    return str(fleet.json("status", run_id)["status"])


def test_the_page_opens_with_its_token_and_refuses_without(browser: Any, dashboard: Dashboard) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        refused = page.goto(dashboard.origin + "/")
        assert refused is not None and refused.status == 401
        assert "needs its access token" in page.inner_text("body")
        wrong = page.goto(dashboard.origin + "/?token=not-the-token")
        assert wrong is not None and wrong.status == 403
        assert "wrong access token" in page.inner_text("body")

        page.goto(dashboard.url)
        assert "token" not in page.url  # taken out of the address once it is a cookie
        expect(page.locator("#link")).to_have_text("live", timeout=LIVE_S)
        (cookie,) = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["value"] == dashboard.token
        assert page.evaluate("document.cookie") == ""  # out of any script's reach
    finally:
        context.close()


def test_nodes_appear_and_a_cut_off_node_turns_unreachable(tab: Page, dash_fleet: Fleet) -> None:
    page = tab.open()
    for name in ("alpha", "beta"):
        expect(page.locator(f'[data-node="{name}"] .badge')).to_have_text("online", timeout=LIVE_S)
    alpha = page.locator('[data-node="alpha"]')
    expect(alpha).to_contain_text("2 cores" if os.cpu_count() == 2 else "cores")
    expect(alpha.locator(".slots")).to_have_text("0/2 used")
    expect(alpha).to_contain_text(dash_fleet.nodes()["alpha"]["info"]["version"])

    beta = dash_fleet.procs["beta"]
    beta.send_signal(signal.SIGSTOP)  # cut off: no heartbeat, no answer
    try:
        badge = page.locator('[data-node="beta"] .badge')
        expect(badge).to_have_text(re.compile(r"^unreachable for \d+ s$"), timeout=LIVE_S)
        first = int(badge.inner_text().split()[2])
        expect(badge).not_to_have_text(f"unreachable for {first} s", timeout=LIVE_S)  # it counts
        assert dash_fleet.nodes()["beta"]["state"] == "unreachable"
    finally:
        beta.send_signal(signal.SIGCONT)
    expect(page.locator('[data-node="beta"] .badge')).to_have_text("online", timeout=LIVE_S)


def test_a_run_from_the_cli_appears_live_and_its_jobs_succeed(tab: Page, dash_fleet: Fleet) -> None:
    page = tab.open("#/runs")
    page.evaluate("window.__sameDocument = 42")
    run = _run(dash_fleet, "-t", "echo one", "-t", "sleep 1; echo two", "--name", "live <b>run</b>")
    row = page.locator(f'tr[data-run="{run["id"]}"]')
    expect(row).to_be_visible(timeout=LIVE_S)
    expect(row).to_contain_text("live <b>run</b>")  # user text as text, not markup
    row.locator("a").click()
    jobs = page.locator("table.jobs tbody tr")
    expect(jobs).to_have_count(2, timeout=LIVE_S)
    for job in run["jobs"]:
        expect(page.locator(f'tr[data-job="{job["id"]}"] .badge')).to_have_text("success", timeout=LIVE_S)
    expect(page.locator("section.head .badge").first).to_have_text("success", timeout=LIVE_S)
    expect(page.locator(".total-cost")).to_have_text("$0.0000")
    assert page.evaluate("window.__sameDocument") == 42  # never reloaded


def test_log_lines_stream_into_the_job_view(tab: Page, dash_fleet: Fleet) -> None:
    run = _run(dash_fleet, "for i in $(seq 1 40); do echo tick-$i; sleep 0.2; done", "--timeout", "300")
    job = run["jobs"][0]["id"]
    page = tab.open(f"#/jobs/{job}")
    log = page.locator("pre.log")
    expect(log).to_contain_text("tick-3", timeout=LIVE_S)
    assert "tick-40" not in log.inner_text()  # the job is still printing: these came live
    expect(page.locator("section.head .badge").first).to_have_text("running")
    expect(page.locator("section.head")).to_contain_text("of 5.0m")  # elapsed against the timeout
    expect(log).to_contain_text("tick-40", timeout=LIVE_S * 2)
    expect(page.locator(".log-state")).to_have_text("40 lines, ended", timeout=LIVE_S)
    text = log.inner_text()
    assert text.index("tick-3\n") < text.index("tick-39\n")


def test_the_diff_view_shows_the_jobs_change(tab: Page, dash_fleet: Fleet, tmp_path: Path) -> None:
    work, _remote = make_repo(tmp_path, {"README.md": "sample\n", "keep.txt": "kept\n"})
    change = (
        "printf 'changed\\n' > README.md && printf 'new <i>file</i>\\n' > added.txt && git rm -q keep.txt"
    )
    run = _run(dash_fleet, "--repo", str(work), change)
    wait_until(lambda: _status(dash_fleet, run["id"]) == "success", 60, "the run")
    job = run["jobs"][0]["id"]
    page = tab.open(f"#/jobs/{job}")
    files = page.locator("table.files tbody tr")
    expect(files).to_have_count(3, timeout=LIVE_S)
    expect(page.locator("table.files")).to_contain_text("README.md")
    expect(page.locator("table.files")).to_contain_text("added.txt")
    expect(page.locator("table.files")).to_contain_text("deleted")
    diff = page.locator("pre.diff")
    expect(diff.locator("span.add", has_text="+changed")).to_have_count(1)
    expect(diff.locator("span.del", has_text="-sample")).to_have_count(1)
    expect(diff.locator("span.add", has_text="+new <i>file</i>")).to_have_count(1)
    assert diff.locator("i").count() == 0  # the file's text stayed text
    assert page.locator(".diff-box").evaluate("e => e.lastChild.nodeName") == "PRE"  # nothing after it
    expected = dash_fleet.json("diff", job, cwd=work)["diff"]
    assert diff.inner_text().strip() == expected.strip()  # what `flota diff` shows


def test_cancel_from_the_page_stops_the_jobs_processes(tab: Page, dash_fleet: Fleet, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    run = _run(dash_fleet, f"echo $$ > {pid_file}; exec sleep 300")
    pid = wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 60, "the job's process")
    process = psutil.Process(int(pid))
    assert process.name() == "sleep"
    job = run["jobs"][0]["id"]
    page = tab.open(f"#/jobs/{job}")
    cancel = page.locator("button.cancel")
    cancel.click()
    expect(cancel).to_have_text("Cancel? click again")  # asks first
    assert process.is_running()
    cancel.click()
    expect(page.locator(".note.ok")).to_contain_text(f"cancelled 1 job: {job}", timeout=LIVE_S)
    expect(page.locator("section.head .badge").first).to_have_text("cancelled", timeout=LIVE_S)

    def gone() -> bool:
        try:
            return process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, 30, "the job's process to end")
    assert _status(dash_fleet, run["id"]) == "cancelled"


def test_drain_and_undrain_from_the_page_show_in_flota_nodes(tab: Page, dash_fleet: Fleet) -> None:
    page = tab.open()
    beta = page.locator('[data-node="beta"]')
    beta.locator("button.drain").click()
    expect(page.locator(".note.ok").first).to_contain_text("node beta: draining", timeout=LIVE_S)
    wait_until(lambda: dash_fleet.nodes()["beta"]["state"] == "draining", 20, "beta draining")
    expect(beta.locator(".badge")).to_have_text("draining", timeout=LIVE_S)
    beta.locator("button.undrain").click()
    expect(page.locator(".note.ok").first).to_contain_text("node beta: takes new jobs again", timeout=LIVE_S)
    wait_until(lambda: dash_fleet.nodes()["beta"]["state"] == "online", 20, "beta online")
    expect(beta.locator(".badge")).to_have_text("online", timeout=LIVE_S)


def test_retry_and_cleanup_from_the_run_view(tab: Page, dash_fleet: Fleet) -> None:
    run = _run(dash_fleet, "echo trying; exit 3")
    wait_until(lambda: _status(dash_fleet, run["id"]) == "failed", 60, "the run to fail")
    job = run["jobs"][0]["id"]
    page = tab.open(f"#/runs/{run['id']}")
    row = page.locator(f'tr[data-job="{job}"]')
    expect(row.locator(".badge")).to_have_text("failed", timeout=LIVE_S)
    expect(row).to_contain_text("exit")  # its error, said in the note column
    page.locator("button.retry-run").click()
    expect(page.locator(".note.ok").first).to_contain_text(f"{job} queued again", timeout=LIVE_S)
    wait_until(lambda: len(dash_fleet.json("status", job)["attempts"]) == 2, 60, "the second attempt")
    expect(row.locator(".badge")).to_have_text("failed", timeout=LIVE_S)
    page.locator("button.cleanup").click()
    page.locator("button.cleanup").click()
    expect(page.locator(".note.ok").first).to_contain_text("worktree", timeout=LIVE_S)
    # its progress as the coordinator reported it: a step per node (both attempts ran on
    # nodes of this fleet), each to its end, then the result
    steps = page.locator("ul.steps li.step")
    expect(steps.first).to_contain_text(f"removing worktrees of {run['id']} on ", timeout=LIVE_S)
    for i in range(steps.count()):
        expect(steps.nth(i)).to_have_class("step done")
        assert re.search(r": (\d+)/\1$", steps.nth(i).inner_text()), steps.nth(i).inner_text()
    expect(page.locator("ul.steps li.result.ok")).to_contain_text("removed ")
    tab.go(f"#/jobs/{job}")
    expect(page.locator("table.attempts tbody tr")).to_have_count(2, timeout=LIVE_S)


def test_a_competition_shows_the_compare_ranking(tab: Page, dash_fleet: Fleet) -> None:
    run = _run(dash_fleet, "--models", "m-one,m-two", "echo hi")
    wait_until(lambda: _status(dash_fleet, run["id"]) == "success", 60, "the run")
    page = tab.open(f"#/runs/{run['id']}")
    ranking = page.locator("section.ranking tbody tr")
    expect(ranking).to_have_count(2, timeout=LIVE_S)
    expected = [row["model"] for row in dash_fleet.json("compare", run["id"])]
    assert [ranking.nth(i).locator("td").nth(1).inner_text() for i in range(2)] == expected


def test_the_coordinator_going_away_and_coming_back(tab: Page, dash_fleet: Fleet) -> None:
    """Last in this module: it restarts the fleet's coordinator, on another port (the
    dashboard reads the address it wrote again, as `flota events` does)."""
    page = tab.open()
    expect(page.locator('[data-node="alpha"] .badge')).to_have_text("online", timeout=LIVE_S)
    address = (dash_fleet.home / "admin" / "coordinator").read_text().strip()
    dash_fleet.stop("coordinator")
    link = page.locator("#link")
    expect(link).to_have_text(re.compile(r"^coordinator: cannot reach the coordinator at "), timeout=LIVE_S)
    tab.allow("status of 503 (Service Unavailable)")  # the drain's answer, below
    page.locator('[data-node="alpha"] button.drain').click()  # refused: said in one line
    expect(page.locator(".note.error").first).to_contain_text(
        f"flota: cannot reach the coordinator at {address}", timeout=LIVE_S
    )
    dash_fleet.start_coordinator()
    assert (dash_fleet.home / "admin" / "coordinator").read_text().strip() != address
    expect(link).to_have_text("live", timeout=LIVE_S * 2)
    expect(page.locator('[data-node="alpha"] .badge')).to_have_text("online", timeout=LIVE_S * 2)
    assert dash_fleet.nodes()["alpha"]["state"] == "online"  # the drain never happened
    run = _run(dash_fleet, "echo after the restart")
    tab.go("#/runs")
    expect(page.locator(f'tr[data-run="{run["id"]}"] .badge').first).to_have_text("success", timeout=LIVE_S)
