"""A chatty job on a node cut off from its coordinator, with real daemons on loopback:
the node's journal keeps the newest output within its cap on disk (through a daemon
restart), and the coordinator, back, gets the tail, a marker and the count of the rest."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from tests.fleet import Fleet, wait_until

pytestmark = pytest.mark.timeout(180)

CAP = 1 << 20  # output_cap_mb = 1
# Lines of about 70 bytes: the MiB a result holds is some 15,000 of them, within the
# coordinator's own 50,000 lines per attempt.
LINE = "%07.0f a chatty job prints far more than its node keeps while cut off"
# A trim step (1 MiB), a journal step (256 KiB) and a batch; the last MiB stays whatever
# the cap (END_KEPT).
SLACK = (1 << 20) + 768 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _on_disk(path: Path) -> int:
    return path.stat().st_blocks * 512


def _start(path: Path) -> int:
    """Where the node reads the output on from (the journal's offset file)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1


def test_a_cut_off_node_keeps_the_tail_of_a_chatty_job_within_its_cap(fleet: Fleet) -> None:
    listen = f"127.0.0.1:{_free_port()}"  # the restarted coordinator is where the node expects it
    fleet.start_coordinator("--lost-after", "120", listen=listen)
    state = fleet.join("chatty")
    (state / "node.toml").write_text("output_cap_mb = 1\n")
    fleet.start_node("chatty", join=False)
    go1, go2 = fleet.home / "go1", fleet.home / "go2"
    first, last = 200_000, 330_000  # some 23 MiB
    command = (
        f"while [ ! -e {go1} ]; do sleep 0.05; done; seq -f '{LINE}' 1 {first}; "
        f"while [ ! -e {go2} ]; do sleep 0.05; done; seq -f '{LINE}' {first + 1} {last}"
    )
    run = fleet.json("run", "--retries", "0", command, check=True)
    job_id = run["jobs"][0]["id"]
    job = wait_until(lambda: (j := fleet.json("status", job_id))["status"] == "running" and j, what="running")
    attempt = job["attempts"][0]["id"]
    journal = state / "jobs" / attempt
    out, offset = journal / "output", journal / "offset"

    fleet.stop("coordinator", signal.SIGKILL)  # the node is on its own from here
    time.sleep(2)  # the node sees its session end
    go1.touch()
    printed = sum(len(LINE % i) + 1 for i in range(1, first + 1))
    wait_until(lambda: out.exists() and out.stat().st_size == printed, 30, "the job's first part")
    wait_until(lambda: _start(offset) >= printed - CAP - SLACK, 30, "the node to read it")
    wait_until(lambda: _on_disk(out) <= CAP + SLACK, 10, "the node to free what it dropped")

    # The daemon dies and comes back, still cut off: it reads the journal back.
    fleet.stop("chatty", signal.SIGKILL)
    fleet.start_node("chatty", join=False, wait=False)
    wait_until(lambda: f"resumed {attempt}" in fleet.log("chatty"), 30, "the restarted daemon")
    go2.touch()
    wait_until(lambda: (journal / "result.pb").exists(), 60, "the job's end, journaled")
    assert out.stat().st_size > 20 * CAP
    assert _on_disk(out) <= CAP + SLACK, _on_disk(out)

    fleet.start_coordinator("--lost-after", "120", listen=listen)
    done = wait_until(
        lambda: (j := fleet.json("status", job_id))["status"] == "success" and j, 60, "the result collected"
    )
    lines = fleet.flota("logs", job_id, check=True).stdout.splitlines()
    marker, kept = lines[0], lines[1:]
    dropped = int(kept[0].split()[0]) - 1
    assert marker == f"[flota: {dropped} earlier lines dropped on the node: the coordinator was unreachable]"
    assert kept == [LINE % i for i in range(dropped + 1, last + 1)]  # the newest, in order, none missing
    size = len(LINE % 1) + 1
    assert CAP - 1000 * size <= len(kept) * size <= CAP  # the last MiB, give or take a batch
    result = done["result"]
    assert int(result["log_lines_lost"]) == dropped
    assert int(result["log_lines_marked"]) == dropped
