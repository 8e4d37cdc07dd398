"""Output no coordinator has taken yet: the newest lines, capped; the older ones counted.

While no coordinator session listens (the node is cut off, or none ever came), a job's
lines wait in its :class:`Backlog` instead of going out. It holds at most ``cap`` bytes
of the output, the most recent: older lines are dropped and counted, and when the lines
can go (a coordinator is back, or the attempt ends and its result takes them) a marker
line comes first, ``[flota: N earlier lines dropped on the node: the coordinator was
unreachable]``, and the result's ``log_lines_lost`` counts them.

The same lines are on disk, in the journal's ``output`` file from :attr:`Backlog.start`
on: everything before that was delivered, or dropped and counted. So the runner frees
that part of the file (:meth:`~node_agent.journal.Journal.trim`, at the offsets
:meth:`Backlog.trim_to` names) and a chatty job on a node cut off for hours takes about
``cap`` bytes of disk, not all it ever printed. ``start``, ``dropped`` and ``marked``
are journaled together (the ``offset`` file, :meth:`Backlog.snapshot`): a restarted
daemon reads the output again from that ``start`` and knows what was dropped before it.
While nothing is held that is exact, after every batch (a restart repeats no line); while
lines are dropped, every 256 KiB of them (an older snapshot is as good: the lines after
it are read, held and dropped again), and the file is never freed past it.

Plain data: no I/O here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = ["CAP_BYTES", "END_KEPT", "TRIM_STEP", "Backlog", "batches", "dropped_marker"]

CAP_BYTES = 4 << 20  # per attempt, unless node.toml says (output_cap_mb)
# The output's last MiB stays on disk whatever was delivered: an agent CLI's report is
# the last JSON object it printed, read from there (node_agent/agents/shell.py).
END_KEPT = 1 << 20
TRIM_STEP = 1 << 20  # the file is trimmed a MiB or more at a time: few system calls
_JOURNAL_STEP = 256 * 1024  # while dropping, the journal moves on this much at a time
_BLOCK = 4096  # a file system frees whole blocks
# What was held goes out in events of at most this much: far below the 4 MiB message limit.
_BATCH_LINES = 1000
_BATCH_BYTES = 256 * 1024


def dropped_marker(count: int) -> str:
    return f"[flota: {count} earlier lines dropped on the node: the coordinator was unreachable]"


def batches(lines: Sequence[str]) -> Iterator[list[str]]:
    """``lines`` in order, in lists of at most 1000 lines and about 256 KiB (one event each)."""
    batch: list[str] = []
    size = 0
    for line in lines:
        if batch and (len(batch) >= _BATCH_LINES or size + len(line) > _BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += len(line) + 1
    if batch:
        yield batch


@dataclass
class Backlog:
    cap: int = CAP_BYTES
    start: int = 0  # output offset of the oldest line held (of the next line when none is)
    end: int = 0  # output offset just past the newest whole line handed over
    dropped: int = 0  # lines dropped here, not marked in the log yet
    marked: int = 0  # lines dropped here and marked in the log already
    trimmed: int = 0  # the output file is freed up to here
    journaled: tuple[int, int, int] = (-1, 0, 0)  # (start, dropped, marked) as the journal has them
    can_trim: bool = True  # False where the file system cannot free part of a file
    # Held lines in batches, each with the offset where it starts: dropping whole
    # batches keeps `start` on a line boundary a restarted daemon can read on from.
    _batches: deque[tuple[int, list[str]]] = field(default_factory=deque)
    _open: list[str] = field(default_factory=list)  # handed over, their end not known yet

    @classmethod
    def resumed(cls, cap: int, start: int, dropped: int, marked: int) -> Backlog:
        """The backlog a restarted daemon rebuilds by reading the output from ``start``."""
        return cls(cap, start, start, dropped, marked, journaled=(start, dropped, marked))

    @property
    def holding(self) -> bool:
        return bool(self._batches or self._open or self.dropped)

    def hold(self, lines: Sequence[str]) -> None:
        """Keep ``lines``; :meth:`reached` says where in the file they end."""
        self._open.extend(lines)

    def reached(self, offset: int) -> None:
        """Every line handed over so far (held or delivered) ends before ``offset``."""
        if self._open:
            self._batches.append((self.end, self._open))
            self._open = []
        self.end = offset
        while len(self._batches) > 1 and self.end - self._batches[0][0] > self.cap:
            self.dropped += len(self._batches.popleft()[1])
        self.start = self._batches[0][0] if self._batches else offset

    def take(self, limit: int = 0) -> list[str]:
        """Everything held, oldest first, after a marker for what was dropped (with
        ``limit``, only the newest lines up to that many bytes: the rest counts as dropped).
        What was dropped counts as marked from now on; nothing is held any more."""
        lines = [line for _, batch in self._batches for line in batch] + self._open
        if limit:
            size, first = 0, len(lines)
            while first and size + len(lines[first - 1].encode()) + 1 <= limit:
                first -= 1
                size += len(lines[first].encode()) + 1
            self.dropped += first
            lines = lines[first:]
        if self.dropped:
            lines.insert(0, dropped_marker(self.dropped))
        self.marked += self.dropped
        self.dropped = 0
        self._batches.clear()
        self._open = []
        self.start = self.end
        return lines

    def snapshot(self) -> tuple[int, int, int] | None:
        """(start, dropped, marked) for the journal, or None when what it has will do."""
        now, last = (self.start, self.dropped, self.marked), self.journaled
        if now == last:
            return None
        if self._batches and now[2] == last[2] and 0 <= now[0] - last[0] < _JOURNAL_STEP:
            return None  # dropping: a restart from the last snapshot reads a little more again
        return now

    def trim_to(self) -> int:
        """Where the output file may be freed up to now (never past what the journal says a
        restart reads from); 0 when not worth a system call."""
        if not self.can_trim:
            return 0
        upto = min(self.journaled[0], self.end - END_KEPT) // _BLOCK * _BLOCK
        return upto if upto - self.trimmed >= TRIM_STEP else 0
