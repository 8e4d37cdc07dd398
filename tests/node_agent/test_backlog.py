"""The backlog of output no coordinator has taken: the newest lines up to a cap, the older
ones counted, the file offsets a restart reads on from, and where the file may be freed."""

from __future__ import annotations

from node_agent.backlog import END_KEPT, TRIM_STEP, Backlog, batches, dropped_marker


def feed(backlog: Backlog, first: int, count: int, width: int = 10) -> int:
    """Lines `first`.. of `width` bytes each (newline included), as one batch; its end."""
    lines = [str(i).rjust(width - 1, "0") for i in range(first, first + count)]
    backlog.hold(lines)
    end = backlog.end + count * width
    backlog.reached(end)
    return end


def test_lines_under_the_cap_are_all_kept() -> None:
    backlog = Backlog(cap=1000)
    feed(backlog, 0, 50)
    feed(backlog, 50, 50)
    assert backlog.holding and (backlog.start, backlog.end, backlog.dropped) == (0, 1000, 0)
    assert backlog.take() == [str(i).rjust(9, "0") for i in range(100)]
    assert (backlog.start, backlog.marked, backlog.holding) == (1000, 0, False)


def test_past_the_cap_the_oldest_batches_go_and_are_counted() -> None:
    backlog = Backlog(cap=1000)
    for batch in range(10):
        feed(backlog, batch * 30, 30)  # 300 bytes a batch, 3000 in all
    # At most the cap is held, whole batches: the last three.
    assert (backlog.start, backlog.end, backlog.dropped) == (2100, 3000, 210)
    lines = backlog.take()
    assert lines[0] == dropped_marker(210)
    assert lines[1:] == [str(i).rjust(9, "0") for i in range(210, 300)]
    # Once marked, the count moves to `marked` (the result's log_lines_marked).
    assert (backlog.dropped, backlog.marked, backlog.start) == (0, 210, 3000)
    feed(backlog, 300, 5)
    assert backlog.take() == [str(i).rjust(9, "0") for i in range(300, 305)]
    assert backlog.marked == 210


def test_delivered_lines_move_the_start_along() -> None:
    backlog = Backlog(cap=1000)
    backlog.reached(500)  # delivered, nothing held
    assert (backlog.start, backlog.end, backlog.holding) == (500, 500, False)
    feed(backlog, 0, 10)
    assert (backlog.start, backlog.end) == (500, 600)


def test_a_limited_take_keeps_the_newest_and_counts_the_rest() -> None:
    backlog = Backlog(cap=10_000)
    feed(backlog, 0, 100)
    lines = backlog.take(limit=200)  # 20 lines of 10 bytes
    assert lines == [dropped_marker(80), *(str(i).rjust(9, "0") for i in range(80, 100))]
    assert backlog.marked == 80


def test_a_restart_goes_on_with_the_journaled_counts() -> None:
    backlog = Backlog.resumed(1000, start=4000, dropped=7, marked=3)
    assert backlog.holding  # seven lines wait for their marker
    feed(backlog, 0, 2)
    assert backlog.take() == [dropped_marker(7), "000000000", "000000001"]
    assert (backlog.marked, backlog.start) == (10, 4020)


def journal(backlog: Backlog) -> None:
    """What the runner does after each batch: journal the snapshot, if there is a new one."""
    snapshot = backlog.snapshot()
    if snapshot is not None:
        backlog.journaled = snapshot


def test_the_file_is_freed_below_the_start_in_steps_keeping_its_last_mib() -> None:
    backlog = Backlog(cap=2 * TRIM_STEP)
    assert backlog.trim_to() == 0
    backlog.reached(END_KEPT + TRIM_STEP - 1)  # delivered, but not a whole step to free yet
    journal(backlog)
    assert backlog.trim_to() == 0
    backlog.reached(10 * TRIM_STEP)
    backlog.journaled = (3 * TRIM_STEP + 5000, 0, 0)  # what the journal says, so far
    assert (
        backlog.trim_to() == 3 * TRIM_STEP + 4096
    )  # never past it (a restart reads from there), whole blocks
    journal(backlog)
    assert backlog.trim_to() == 10 * TRIM_STEP - END_KEPT  # the last MiB stays
    backlog.trimmed = 10 * TRIM_STEP - END_KEPT
    assert backlog.trim_to() == 0  # freed already
    # Held lines are not freed, however much follows them.
    backlog.hold(["x"])
    backlog.reached(backlog.end + 2)
    held_from = backlog.start
    backlog.reached(held_from + 10 * TRIM_STEP)
    journal(backlog)
    assert backlog.start == held_from and backlog.trim_to() == held_from // 4096 * 4096
    backlog.can_trim = False
    assert backlog.trim_to() == 0


def test_what_was_held_goes_out_in_events_well_under_the_message_limit() -> None:
    long = "x" * 8000  # lines are cut at 8 KiB on the node
    lines = [long] * 600 + [str(i) for i in range(2500)]
    out = list(batches(lines))
    assert [line for batch in out for line in batch] == lines  # all, in order
    assert all(len(batch) <= 1000 and sum(len(x) + 1 for x in batch) <= 256 * 1024 + 8001 for batch in out)
    assert len(out[0]) == 32  # 32 lines of 8 KiB: a quarter MiB, not 1000 of them (8 MB)
    assert list(batches([])) == []


def test_the_journal_is_exact_while_nothing_is_held_and_steps_while_dropping() -> None:
    backlog = Backlog(cap=1000)
    assert backlog.snapshot() == (0, 0, 0)
    backlog.reached(40)  # delivered
    assert backlog.snapshot() == (40, 0, 0)
    backlog.journaled = (40, 0, 0)
    assert backlog.snapshot() is None  # nothing new
    backlog.reached(41)
    assert backlog.snapshot() == (41, 0, 0)  # every batch: a restart repeats no line
    backlog.journaled = (41, 0, 0)
    # Held, then dropped: the snapshot moves on in steps, and stays consistent.
    writes = 0
    for batch in range(20_000):
        feed(backlog, batch * 10, 10)  # 100 bytes a batch, 2 MB in all
        snap = backlog.snapshot()
        if snap is not None:
            assert snap == (backlog.start, backlog.dropped, 0)  # one consistent moment
            backlog.journaled = snap
            writes += 1
    assert 5 <= writes <= 10  # every 256 KiB dropped, not every batch
    start, dropped, _ = backlog.journaled
    assert 0 <= backlog.start - start < 256 * 1024 and dropped <= backlog.dropped
    # The file is never freed past the journaled start: a restart reads from there.
    backlog.end += 10 * TRIM_STEP
    assert backlog.trim_to() <= start
    # A coordinator back: everything goes out and the journal is exact again.
    backlog.take()
    assert backlog.snapshot() == (backlog.end, 0, backlog.marked)


def test_a_resumed_backlog_starts_from_what_the_journal_has() -> None:
    backlog = Backlog.resumed(1000, start=4096, dropped=3, marked=1)
    assert backlog.journaled == (4096, 3, 1) and backlog.snapshot() is None
