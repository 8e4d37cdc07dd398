"""Tables and JSON for the CLI. JSON is the proto message with its field names, so the
shape is exactly the one documented in protos/flota/v1/*.proto (see docs/cli.md)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from protos.contract import FLOTA_VERSION, EndReason
from protos.flota.v1 import coordinator_pb2, types_pb2

__all__ = [
    "NO_CHANGES",
    "compare_rows",
    "compare_table",
    "FitTable",
    "ProgressLines",
    "console",
    "count",
    "jobs_table",
    "metered_line",
    "no_changes",
    "node_version",
    "nodes_table",
    "print_json",
    "prune_lines",
    "results_table",
    "runs_table",
    "to_dict",
]

# Markup off: task names, commands and errors are user text and print as written.
# Piped output is not cut at 80 columns: a script reading it wants whole lines.
console = Console(
    highlight=False,
    markup=False,
    width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200,
)

STATUS_STYLE = {
    "success": "green",
    "failed": "red",
    "timeout": "red",
    "lost": "red",
    "cancelled": "yellow",
    "partial": "yellow",
    "superseded": "dim",
    "draining": "yellow",
    "running": "cyan",
    "dispatching": "cyan",
    "queued": "dim",
    "waiting": "dim",
    "online": "green",
    "unreachable": "yellow",
    "offline": "dim",
}


_TEXT_MIN = 6  # a shrunk text column keeps this much: a few letters and the ellipsis


class FitTable:
    """A table that fits the width it is printed at, one line per row.

    Three kinds of column: `whole` ones (ids, branches: what a user copies into the next
    command) are never cut; `text` ones (a task, an error, an address) shrink first, widest
    first, ending in an ellipsis; the others (statuses, numbers) keep their width. When even
    that cannot fit, the columns named in `drop` go, in that order (a wider terminal or
    --json shows them)."""

    def __init__(self, *headers: str, whole: Iterable[str], text: Iterable[str], drop: Iterable[str] = ()):
        self.headers = list(headers)
        self.whole, self.text, self.drop = set(whole), set(text), list(drop)
        self.rows: list[list[Text]] = []

    def add_row(self, *cells: str | Text) -> None:
        if len(cells) != len(self.headers):
            raise ValueError(f"{len(cells)} cells for {len(self.headers)} columns")
        self.rows.append([cell if isinstance(cell, Text) else Text(" ".join(cell.split())) for cell in cells])

    def _natural(self, index: int) -> int:
        return max([len(self.headers[index]), *(row[index].cell_len for row in self.rows)])

    def _needs(self, keep: list[int]) -> int:
        widths = [
            min(self._natural(i), _TEXT_MIN) if self.headers[i] in self.text else self._natural(i)
            for i in keep
        ]
        return sum(widths) + 2 * (len(keep) - 1)

    def build(self, width: int) -> Table:
        keep = list(range(len(self.headers)))
        for header in self.drop:
            if self._needs(keep) <= width:
                break
            keep = [i for i in keep if self.headers[i] != header]
        t = Table(box=None, pad_edge=False)
        for i in keep:
            header = self.headers[i]
            # Only text columns are wrapable, so only they are narrowed; their cells stay one line.
            t.add_column(
                header,
                no_wrap=header not in self.text,
                overflow="fold" if header in self.whole else "ellipsis",
            )
        for row in self.rows:
            cells = [row[i].copy() for i in keep]
            for i, cell in zip(keep, cells, strict=True):
                if self.headers[i] in self.text:
                    cell.no_wrap, cell.overflow = True, "ellipsis"
            t.add_row(*cells)
        return t

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.build(options.max_width)


def to_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def count(n: int, noun: str) -> str:
    """`1 job`, `3 jobs`."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _status(text: str) -> Text:
    return Text(text, style=STATUS_STYLE.get(text, ""))


# Why a job ended partial or failed, shown beside its status ("partial (max steps)").
_REASON = {
    EndReason.MAX_STEPS: "max steps",
    EndReason.BUDGET: "budget",
    EndReason.TIME_LIMIT: "time limit",
    EndReason.CUT_OFF: "cut off",
    EndReason.MODEL_UNREACHABLE: "model unreachable",
}


def _job_status(j: coordinator_pb2.Job) -> Text:
    """A job's status, with the reason it ended so when it is partial or failed."""
    reason = _REASON.get(EndReason.read(j.result.reason)) if j.status in ("partial", "failed") else None
    return _status(j.status) + (f" ({reason})" if reason else "")


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


def _ago(ts: float) -> str:
    if ts <= 0:
        return "never"
    return _duration(max(time.time() - ts, 0.001)) + " ago"


class ProgressLines:
    """A long call's progress on stderr (stdout stays the result's): `what: done/total`,
    the first and last line of each step and at most one a second in between."""

    def __init__(self, period_s: float = 1.0) -> None:
        self.period_s = period_s
        self._shown: dict[str, float] = {}

    def __call__(self, step: coordinator_pb2.Progress) -> None:
        now = time.monotonic()
        last = self._shown.get(step.what)
        if last is None or step.done >= step.total or now - last >= self.period_s:
            self._shown[step.what] = now
            sys.stderr.write(f"{step.what}: {step.done}/{step.total}\n")
            sys.stderr.flush()


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def prune_lines(reply: coordinator_pb2.PruneReply, age: str) -> list[str]:
    """What a prune takes (a dry run's reply): the runs, then per remote its refs, then the nodes."""
    jobs = sum(r.jobs for r in reply.runs)
    lines = [f"{count(len(reply.runs), 'run')} ({count(jobs, 'job')}) ended more than {age} ago:"]
    for r in reply.runs:
        name = f"  {r.name}" if r.name else ""
        lines.append(
            f"  {r.id}  {r.status:<9}  {count(r.jobs, 'job'):<8}  ended {_when(r.finished_at)}{name}"
        )
    for remote in reply.remotes:
        if remote.error:
            lines.append(f"{remote.url}: {remote.error}; its runs are kept")
            continue
        branches = sum(ref.startswith("refs/heads/") for ref in remote.refs)
        plural = "" if branches == 1 else "es"
        others = count(len(remote.refs) - branches, "other ref")
        lines.append(f"{remote.url}: {branches} branch{plural} (flota/RUN/...), {others} (refs/flota/...)")
    nodes = sorted({n for r in reply.runs for n in r.nodes})
    if nodes:
        lines.append(f"nodes {', '.join(nodes)}: the runs' worktrees, and their refs in the mirrors")
    return lines


NO_CHANGES = "no changes"


def no_changes(job: coordinator_pb2.Job) -> bool:
    """A job on a repository that ended and left its files as the base had them: its agent
    answered in text, say, and no branch was pushed (unless the run asked for an empty commit)."""
    r = job.result
    return job.HasField("result") and bool(r.base_commit) and not r.files_modified


def _cost(r: types_pb2.JobResult) -> str:
    """A job's cost; "metered" when the node's metering proxy counted it (a job with a
    budget), rather than the agent saying so itself."""
    return f"${r.cost_usd:.4f} metered" if r.HasField("metered") else f"${r.cost_usd:.4f}"


def metered_line(m: types_pb2.MeterUsage) -> str:
    """What a job's metering proxy counted, as `flota status JOB` says it."""
    refused = f", {m.refused} refused" if m.refused else ""
    line = (
        f"metered by the node: {m.calls} calls{refused}, {m.tokens_in} tokens in, {m.tokens_out} out, "
        f"${m.cost_usd:.6f} of a ${m.budget_usd:g} budget"
    )
    return f"{line} ({m.note})" if m.note else line


def _note(job: coordinator_pb2.Job) -> str:
    """A queued (or waiting) job's wait, an ended one's error; for a success, whether it changed nothing."""
    if job.status in ("queued", "waiting"):
        return job.wait_reason
    if job.status == "success":
        return NO_CHANGES if no_changes(job) else ""
    return job.result.error if job.HasField("result") else ""


def node_version(info: types_pb2.NodeInfo, build: str) -> str:
    """A node's version, with its build when it runs another build of this CLI's version
    (`build`: the one this CLI would install)."""
    if info.version == FLOTA_VERSION and info.build and build and info.build != build:
        return f"{info.version} (build {info.build[:8]})"
    return info.version


def nodes_table(reply: coordinator_pb2.ListNodesReply, build: str = "") -> FitTable:
    t = FitTable(
        "NAME", "ADDRESS", "LINK", "NETWORK", "LABELS", "CPU", "RAM", "GPU", "LOAD", "SLOTS", "AGENTS",
        "MODELS", "VERSION", "STATE",
        whole=("NAME",),
        text=("ADDRESS", "NETWORK", "LABELS", "GPU", "AGENTS", "MODELS", "STATE"),
        drop=("LOAD", "AGENTS", "MODELS", "LABELS", "GPU", "RAM", "VERSION", "LINK"),
    )  # fmt: skip
    for n in reply.nodes:
        i, f = n.info, n.info.facts
        gpus = ",".join(g.name for g in f.gpus) or "-"
        state = _status(n.state) + ("" if n.state == "online" else f" ({_ago(n.last_seen)})")
        if n.refused:  # its protocol: `flota version` has the whole line
            state = Text("refused (protocol)", style="red")
        t.add_row(
            i.name,
            n.address or "-",
            n.link or "-",  # dialed (by the coordinator) or home (the node dialed it)
            i.network or "-",
            ",".join(f"{k}={v}" for k, v in sorted(i.labels.items())) or "-",
            str(f.cpu_count or "-"),
            f"{f.memory_total_mb / 1024:.1f}G" if f.memory_total_mb else "-",
            gpus,
            f"{f.load_1m:.2f}" if f.cpu_count else "-",
            f"{i.running}/{i.slots}" if i.slots else "-",
            ",".join(f.agent_clis) or "-",
            # Each local model and its server's slots: "openai/qwen(4)".
            ",".join(f"{m.model}({m.slots})" if m.slots else m.model for m in f.local_models) or "-",
            node_version(i, build) or "-",
            state,
        )
    return t


def runs_table(runs: list[coordinator_pb2.Run]) -> FitTable:
    t = FitTable("RUN", "NAME", "STATUS", "CREATED", "DURATION", whole=("RUN",), text=("NAME",))
    for r in runs:
        end = r.finished_at or time.time()
        t.add_row(r.id, r.name or "-", _status(r.status), _ago(r.created_at), _duration(end - r.created_at))
    return t


def jobs_table(run: coordinator_pb2.Run) -> FitTable:
    """A run's jobs; a graph's (flota run --plan) with each one's role and what it comes after."""
    graph = any(j.depends_on or j.role for j in run.jobs)
    names = {j.id: j.name for j in run.jobs}
    cols = ["JOB", "TASK", *(["ROLE", "AFTER"] if graph else []), "NODE", "STATUS", "ATTEMPTS", "NOTE"]
    t = FitTable(*cols, whole=("JOB",), text=("TASK", "AFTER", "NODE", "NOTE"))
    for j in run.jobs:
        after = [j.role or "-", ", ".join(names.get(d, d) for d in j.depends_on) or "-"] if graph else []
        row: list[str | Text] = [
            j.id,
            j.name,
            *after,
            j.node_name or "-",
            _job_status(j),
            str(len(j.attempts)),
            _note(j),
        ]
        t.add_row(*row)
    return t


def results_table(run: coordinator_pb2.Run) -> FitTable:
    agents = any(j.agent not in ("", "shell") or j.result.HasField("metered") for j in run.jobs)
    checks = any(j.check for j in run.jobs)
    cols = ["JOB", "TASK", "NODE", "BRANCH", "STATUS", "DURATION", "FILES"]
    cols += ["MODEL", "STEPS", "TOKENS", "COST"] if agents else ["EXIT"]
    cols += ["CHECK"] if checks else []
    t = FitTable(
        *cols,
        "NOTE",
        whole=("JOB", "BRANCH"),
        text=("TASK", "NODE", "FILES", "MODEL", "NOTE"),
        drop=("TOKENS", "STEPS", "DURATION", "MODEL", "EXIT", "FILES", "COST", "NODE"),
    )
    for j in run.jobs:
        r = j.result
        files = len(r.files_modified)
        done = j.HasField("result")
        row: list[str | Text] = [
            j.id,
            j.name,
            j.node_name or "-",
            r.branch or "-",
            _job_status(j),
            _duration(r.duration_s),
            (f"{files} (+{r.insertions}/-{r.deletions})" if files else "0") if run.repo_url else "-",
        ]
        if agents:
            row += [j.model or "-", str(r.steps), f"{r.tokens_in}/{r.tokens_out}", _cost(r)]
        else:
            row += [str(r.exit_code) if done and j.status in ("success", "failed") else "-"]
        if checks:
            row += [r.check or "-"]
        row += [(r.error or j.wait_reason) if j.status != "success" else _note(j)]
        t.add_row(*row)
    return t


# Better first: a passed check, then how the job ended, then whether it changed anything;
# then cheaper, faster, smaller.
_STATUS_RANK = {"success": 0, "partial": 1, "timeout": 2, "failed": 3, "cancelled": 4, "lost": 5}
_CHECK_RANK = {"passed": 0, "": 1, "failed": 2}


def compare_rows(run: coordinator_pb2.Run) -> list[dict[str, Any]]:
    """The jobs of a run ranked as a competition, best first."""
    rows: list[dict[str, Any]] = []
    for j in run.jobs:
        r = j.result
        rows.append(
            {
                "job": j.id,
                "model": j.model,
                "agent": j.agent or "shell",
                "node": j.node_name,
                "status": j.status,
                "check": r.check,
                "cost_usd": r.cost_usd,
                "duration_s": r.duration_s,
                "diff": r.insertions + r.deletions,
                "files": len(r.files_modified),
                "steps": r.steps,
                "tokens_in": r.tokens_in,
                "tokens_out": r.tokens_out,
                "branch": r.branch,
                "no_changes": no_changes(j),
            }
        )
    rows.sort(
        key=lambda x: (
            _CHECK_RANK.get(x["check"], 1),
            _STATUS_RANK.get(x["status"], 9),
            x["no_changes"],
            x["cost_usd"],
            x["duration_s"],
            x["diff"],
        )
    )
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def compare_table(rows: list[dict[str, Any]]) -> FitTable:
    t = FitTable(
        "#", "MODEL", "AGENT", "NODE", "CHECK", "STATUS", "COST", "DURATION", "DIFF", "STEPS", "BRANCH",
        whole=("#", "BRANCH"),
        text=("MODEL", "AGENT", "NODE", "DIFF"),
        drop=("STEPS", "DURATION", "AGENT", "DIFF", "NODE"),
    )  # fmt: skip
    for row in rows:
        t.add_row(
            str(row["rank"]),
            row["model"] or "-",
            row["agent"],
            row["node"] or "-",
            row["check"] or "-",
            _status(row["status"]),
            f"${row['cost_usd']:.4f}",
            _duration(row["duration_s"]),
            NO_CHANGES if row["no_changes"] else f"{row['files']} files, {row['diff']} lines",
            str(row["steps"]),
            row["branch"] or "-",
        )
    return t
