"""The Textual app behind `flota top`: nodes, jobs, and the selected job's live log.

Threads: one follows the event stream (cli/events.Follower) and hands each event to the
UI thread; one follows the selected job's log, replaced when the selection moves; actions
(cancel, drain, retry, diff) run in workers of their own, so the screen never waits on
the network. Every text that came from the fleet (task names, logs, errors) is shown as
plain text, never as markup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, RichLog, Static

from cli.client import Client, CliError, Stream
from cli.events import Follower
from cli.top.state import FleetState, job_row, node_row
from protos.flota.v1 import coordinator_pb2 as pb

__all__ = ["TopApp"]

NODE_COLUMNS = ("NAME", "STATE", "NET", "SLOTS", "LOAD", "MEM", "BATT", "VERSION")
JOB_COLUMNS = ("JOB", "STATUS", "NODE", "ELAPSED", "COST", "TASK")
LOG_LINES = 2000


class Confirm(ModalScreen[bool]):
    """y/n for an action that stops work."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        yield Static(Text(f"{self.question} [y/n]"), id="question")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class TextView(ModalScreen[None]):
    """A long text (a job's diff), scrollable; q or escape closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("q,escape", "app.pop_screen", "close")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text, self.text = title, text

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text(self.title_text, style="bold"))
            yield Static(Text(self.text or "(no change)"))


class TopApp(App[None]):
    CSS = """
    #nodes { height: 30%; }
    #jobs { height: 1fr; }
    #log { height: 30%; border-top: solid $accent; }
    #filter { display: none; height: 1; border: none; }
    #filter.shown { display: block; }
    #status { height: 1; background: $boost; }
    #question { width: auto; padding: 1 2; border: thick $warning; }
    Confirm, TextView { align: center middle; }
    TextView VerticalScroll { width: 95%; height: 90%; border: solid $accent; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("c", "cancel_job", "cancel"),
        Binding("r", "retry_job", "retry"),
        Binding("d", "drain_node", "drain"),
        Binding("v", "diff", "diff"),
        Binding("slash,f", "filter", "filter"),
        Binding("tab", "focus_next", "next pane", show=False),
    ]

    def __init__(self, connect: Callable[[], Client], repo: str | None = None) -> None:
        super().__init__()
        self.connect, self.repo = connect, repo
        self.state = FleetState()
        self.follower = Follower(connect, on_retry=self._retrying)
        self.filter_text = ""
        self.log_job = ""
        self._log_stream: Stream[pb.LogChunk] | None = None
        self._status = "connecting..."

    # --- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        nodes: DataTable[Any] = DataTable(id="nodes", cursor_type="row", zebra_stripes=True)
        jobs: DataTable[Any] = DataTable(id="jobs", cursor_type="row", zebra_stripes=True)
        nodes.add_columns(*NODE_COLUMNS)
        jobs.add_columns(*JOB_COLUMNS)
        yield nodes
        yield jobs
        yield Input(placeholder="filter jobs (enter to apply, empty to clear)", id="filter")
        yield RichLog(id="log", max_lines=LOG_LINES, markup=False, highlight=False, wrap=False)
        yield Static(self._status, id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "flota top"
        self.query_one("#jobs", DataTable).focus()
        self.follow_events()
        self.set_interval(1.0, self._tick)

    # --- the event stream ---------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="events")
    def follow_events(self) -> None:
        try:
            for event in self.follower:
                self.call_from_thread(self._apply, event)
        except CliError as exc:
            self.call_from_thread(self._say, f"stream ended: {exc}")

    def _retrying(self, error: CliError, wait: float) -> None:
        self.call_from_thread(self._say, f"{error}; reconnecting in {wait:g} s")

    def _apply(self, event: pb.Event) -> None:
        changed = self.state.apply(event)
        if "nodes" in changed:
            self._fill_nodes()
        if "jobs" in changed:
            self._fill_jobs()
        running = sum(1 for j in self.state.jobs.values() if j.status == "running")
        where = "live" if self.state.live else "loading"
        self._say(f"{where} · {len(self.state.nodes)} nodes · {running} running · event {self.state.index}")

    def _tick(self) -> None:  # elapsed times and "unreachable for N s" move on their own
        if self.state.live:
            self._fill_nodes()
            self._fill_jobs()

    def _say(self, text: str) -> None:
        self._status = text
        self.query_one("#status", Static).update(Text(text))

    def _fill(self, table: DataTable[Any], rows: list[tuple[str, tuple[str, ...]]]) -> None:
        """Replace the rows, keeping the cursor on the same key when it is still there."""
        key = self._selected(table)
        table.clear()
        for row_key, cells in rows:
            table.add_row(*(Text(c) for c in cells), key=row_key)
        keys = [k for k, _ in rows]
        if key in keys:
            table.move_cursor(row=keys.index(key), animate=False)

    def _fill_nodes(self) -> None:
        table = self.query_one("#nodes", DataTable)
        self._fill(table, [(n.info.id, node_row(n)) for n in self.state.sorted_nodes()])

    def _fill_jobs(self) -> None:
        table = self.query_one("#jobs", DataTable)
        self._fill(table, [(j.id, job_row(j)) for j in self.state.sorted_jobs(self.filter_text)])
        self._show_log(self._selected(table))

    @staticmethod
    def _selected(table: DataTable[Any]) -> str:
        if table.row_count == 0:
            return ""
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:  # no row under the cursor
            return ""
        return str(key.value or "")

    # --- the selected job's log ---------------------------------------------------------------

    def on_data_table_row_highlighted(self, message: DataTable.RowHighlighted) -> None:
        if message.data_table.id == "jobs" and message.row_key.value:
            self._show_log(str(message.row_key.value))

    def _show_log(self, job_id: str) -> None:
        if not job_id or job_id == self.log_job:
            return
        self.log_job = job_id
        if self._log_stream is not None:
            self._log_stream.cancel()
        log = self.query_one("#log", RichLog)
        log.clear()
        log.write(Text(f"── {job_id}", style="bold"))
        self.follow_log(job_id)

    @work(thread=True, exclusive=True, group="log")
    def follow_log(self, job_id: str) -> None:
        client = self.connect()
        stream = client.stream_logs(job_id, follow=True)
        self._log_stream = stream
        try:
            for chunk in stream:
                if self.log_job != job_id:
                    break
                lines = [Text(line) for line in chunk.lines]
                self.call_from_thread(self._write_log, job_id, lines)
        except CliError as exc:
            self.call_from_thread(self._write_log, job_id, [Text(f"(log: {exc})", style="red")])
        finally:
            stream.cancel()
            client.close()

    def _write_log(self, job_id: str, lines: list[Text]) -> None:
        if job_id == self.log_job:
            log = self.query_one("#log", RichLog)
            for line in lines:
                log.write(line)

    # --- actions ------------------------------------------------------------------------------

    def _job(self) -> str:
        return self._selected(self.query_one("#jobs", DataTable))

    def action_cancel_job(self) -> None:
        job_id = self._job()
        if not job_id:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._call(f"cancel {job_id}", lambda c: c.cancel(job_id))

        self.push_screen(Confirm(f"cancel {job_id}?"), answered)

    def action_retry_job(self) -> None:
        job_id = self._job()
        if job_id:
            self._call(f"retry {job_id}", lambda c: c.retry(job_id, False))

    def action_drain_node(self) -> None:
        node_id = self._selected(self.query_one("#nodes", DataTable))
        node = self.state.nodes.get(node_id)
        if node is not None:
            undo = node.state == "draining"
            what = f"{'undrain' if undo else 'drain'} {node.info.name}"
            self._call(what, lambda c: c.drain_node(node.info.name, undo))

    @work(thread=True, group="actions")
    def _call(self, what: str, call: Callable[[Client], object]) -> None:
        client = self.connect()
        try:
            call(client)
            self.call_from_thread(self.notify, f"{what}: done")
        except CliError as exc:
            self.call_from_thread(self.notify, f"{what}: {exc}", severity="error")
        finally:
            client.close()

    @work(thread=True, group="actions")
    def action_diff(self) -> None:
        from cli.checkout import diff_text

        job_id = self.call_from_thread(self._job)
        if not job_id:
            return
        client = self.connect()
        try:
            text = diff_text(client, job_id, self.repo)
            self.call_from_thread(self.push_screen, TextView(f"{job_id}: its change against its base", text))
        except CliError as exc:
            self.call_from_thread(self.notify, f"diff {job_id}: {exc}", severity="error")
        finally:
            client.close()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.value = self.filter_text
        box.focus()

    def on_input_submitted(self, message: Input.Submitted) -> None:
        self.filter_text = message.value.strip()
        message.input.remove_class("shown")
        self._fill_jobs()
        self.query_one("#jobs", DataTable).focus()

    def on_unmount(self) -> None:
        self.follower.cancel()
        self.log_job = ""
        if self._log_stream is not None:
            self._log_stream.cancel()
