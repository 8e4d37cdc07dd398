"""The dashboard's pieces on their own: a page's bounded queue, the feed's state through a
resync, and a job's diff read from a real git remote (a rename, a binary file, a deletion)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cli.client import CliError
from cli.dashboard.coord import Coordinator
from cli.dashboard.diff import Diffs
from cli.dashboard.feed import Feed, Subscriber
from protos.flota.v1 import coordinator_pb2 as pb
from protos.flota.v1 import types_pb2
from tests.fleet import Fleet, git, make_repo


def _run(main: Callable[[], Awaitable[None]]) -> None:
    """asyncio.run on a thread of its own: Playwright's sync API (the browser tests of
    this package) keeps an event loop running on the main thread."""
    failed: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(main())  # type: ignore[arg-type]
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def test_a_page_that_falls_behind_gets_a_snapshot_not_a_backlog() -> None:
    async def main() -> None:
        page = Subscriber(limit=3)
        assert await page.take(0.01) is None  # a new page starts with the whole state
        page.offer("a")
        page.offer("b")
        assert await page.take(0.01) == ["a", "b"]
        assert await page.take(0.01) == []  # nothing came: the caller sends its clock
        for text in "cdef":  # one more than it may hold
            page.offer(text)
        assert await page.take(0.01) is None  # resynced: what it held was dropped
        page.offer("g")
        assert await page.take(0.01) == ["g"]

    _run(main)


def _node(name: str, state: str) -> pb.NodeStatus:
    return pb.NodeStatus(info=types_pb2.NodeInfo(id=f"id-{name}", name=name), state=state)


def test_the_feed_swaps_in_a_snapshot_at_live_and_passes_events_on(
    dash_fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOTA_HOME", str(dash_fleet.home))

    async def main() -> None:
        coordinator = Coordinator(None)
        feed = Feed(coordinator)
        page = feed.subscribe()
        await page.take(0.01)
        feed.take(pb.Event(index=7, type="resync"))
        feed.take(pb.Event(index=7, type="node.snapshot", node=_node("a", "online")))
        feed.take(pb.Event(index=7, type="run.snapshot", run=pb.Run(id="r1", status="running")))
        staged = [json.loads(t)["type"] for t in feed.snapshot()]
        assert staged == ["resync", "live", "upstream"]  # a snapshot counts once it is whole
        feed.take(pb.Event(index=7, type="live"))
        assert await page.take(0.01) is None  # every page is sent the new state
        kinds = [json.loads(t)["type"] for t in feed.snapshot()]
        assert kinds == ["resync", "node.snapshot", "run.snapshot", "live", "upstream"]

        feed.take(pb.Event(index=8, type="job.running", job=pb.Job(id="r1.1", run_id="r1", status="running")))
        feed.take(pb.Event(index=9, type="node.removed", node=_node("a", "removed")))
        got = [json.loads(t) for t in await page.take(0.01) or []]
        assert [(m["index"], m["type"]) for m in got] == [(8, "job.running"), (9, "node.removed")]
        assert feed.index == 9
        kinds = [json.loads(t)["type"] for t in feed.snapshot()]
        assert kinds == ["resync", "run.snapshot", "job.snapshot", "live", "upstream"]
        await coordinator.close()

    _run(main)


def test_a_jobs_diff_lists_each_file_as_git_does(tmp_path: Path) -> None:
    work, remote = make_repo(tmp_path, {"a.txt": "one\ntwo\nthree\nfour\n", "gone.txt": "bye\n"})
    base = git("rev-parse", "HEAD", cwd=work).strip()
    git("switch", "-q", "-c", "flota/r1/1", cwd=work)
    git("mv", "a.txt", "b.txt", cwd=work)
    (work / "b.txt").write_text("one\ntwo\nthree\nfour\nfive\n")
    (work / "blob.bin").write_bytes(bytes(range(256)))
    git("rm", "-q", "gone.txt", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "change", cwd=work)
    head = git("rev-parse", "HEAD", cwd=work).strip()
    git("push", "-q", "origin", "flota/r1/1", cwd=work)
    result = types_pb2.JobResult(branch="flota/r1/1", base_commit=base, head_commit=head)
    job = pb.Job(id="r1.1", run_id="r1", status="success", branch="flota/r1/1", result=result)

    async def main() -> None:
        diffs = Diffs()
        try:
            d = await diffs.of(job, str(remote))
            files = {f["path"]: f for f in d["files"]}
            assert files["b.txt"] == {
                "path": "b.txt", "old_path": "a.txt", "status": "renamed", "insertions": 1, "deletions": 0
            }  # fmt: skip
            assert files["blob.bin"]["status"] == "added" and files["blob.bin"]["insertions"] is None
            assert files["gone.txt"]["status"] == "deleted" and files["gone.txt"]["deletions"] == 1
            assert d["diff"] == git("diff", "--no-color", "-M", base, head, cwd=work)
            assert not d["truncated"]
            running = pb.Job(id="r1.2", run_id="r1", status="running")
            with pytest.raises(CliError, match="is still running: it has no branch yet"):
                await diffs.of(running, str(remote))
            with pytest.raises(CliError, match="ran without a repository"):
                await diffs.of(job, "")
            moved = pb.Job()
            moved.CopyFrom(job)
            moved.result.head_commit = "0" * 40
            with pytest.raises(CliError, match="no longer holds the job's result 000000000000"):
                await diffs.of(moved, str(remote))
        finally:
            diffs.close()

    _run(main)
