"""Tables fit an 80-column terminal: ids and branches whole, long text one line with an
ellipsis (issue 14, defect 6)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cli.render import compare_rows, compare_table, jobs_table, nodes_table, results_table
from protos.flota.v1 import coordinator_pb2, types_pb2

LONG_TASK = "refactor the storage layer so that every query goes through one module and add tests " * 2
LONG_ERROR = "cannot reach the model server at http://127.0.0.1:9/v1: connection refused, retried twice"


def _render(table: Table) -> list[str]:
    console = Console(width=80, record=True, highlight=False, markup=False)
    console.print(table)
    return console.export_text().splitlines()


def _run(agent: str = "shell") -> coordinator_pb2.Run:
    run = coordinator_pb2.Run(id="r1a2b3c", status="failed", repo_url="file:///repo")
    for index in (1, 2, 10):
        job = run.jobs.add(
            id=f"r1a2b3c.{index}",
            name=LONG_TASK,
            node_name="alice-laptop-workstation",
            status="failed",
            agent=agent,
            model="openai/gpt-4o-mini" if agent != "shell" else "",
        )
        job.result.CopyFrom(
            types_pb2.JobResult(
                branch=f"flota/r1a2b3c/{index}-a2",
                error=LONG_ERROR,
                duration_s=12.5,
                files_modified=["a.py", "b.py"],
                insertions=120,
                deletions=7,
                exit_code=1,
                steps=40,
                tokens_in=123456,
                tokens_out=65432,
                cost_usd=1.2345,
            )
        )
        job.attempts.add()
    return run


def _check(lines: list[str], rows: int, whole: list[str]) -> None:
    assert len(lines) == rows + 1, "\n".join(lines)  # a header and one line per row: nothing wrapped
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    text = "\n".join(lines)
    for item in whole:
        assert item in text, f"{item} cut:\n{text}"
    assert "…" in text  # the long text was shortened, and says so


def test_results_fit_80_columns_with_whole_ids_and_branches() -> None:
    for agent in ("shell", "llm"):
        run = _run(agent)
        whole = [j.id for j in run.jobs] + [j.result.branch for j in run.jobs]
        _check(_render(results_table(run)), 3, whole)


def test_jobs_and_compare_fit_80_columns() -> None:
    run = _run("llm")
    _check(_render(jobs_table(run)), 3, [j.id for j in run.jobs])
    _check(_render(compare_table(compare_rows(run))), 3, [j.result.branch for j in run.jobs])


def test_nodes_fit_80_columns() -> None:
    reply = coordinator_pb2.ListNodesReply()
    for name in ("alice-laptop", "build-server-2"):
        node = reply.nodes.add(state="online", address="[fd00:1234:5678:9abc::17]:7380")
        node.info.name = name
        node.info.network = "home"
        node.info.labels.update({"gpu": "rtx4090", "os": "debian", "rack": "top-left-shelf"})
        node.info.slots = 4
        node.info.facts.cpu_count = 16
        node.info.facts.memory_total_mb = 65536
        node.info.facts.agent_clis.extend(["claude", "aider", "codex", "gemini"])
    _check(_render(nodes_table(reply)), 2, ["alice-laptop", "build-server-2"])


def test_a_status_says_why_a_job_stopped_short() -> None:
    run = coordinator_pb2.Run(id="r1", status="failed")
    for index, (status, reason) in enumerate(
        [("partial", "max_steps"), ("failed", "model_unreachable"), ("partial", "cut_off"), ("failed", "")], 1
    ):
        job = run.jobs.add(id=f"r1.{index}", name="task", status=status, agent="llm")
        job.result.CopyFrom(types_pb2.JobResult(status=status, reason=reason))
    for table in (results_table(run), jobs_table(run)):
        text = "\n".join(_render(table))
        assert "partial (max steps)" in text and "failed (model unreachable)" in text
        assert "partial (cut off)" in text
        assert text.count("failed (") == 1  # a plain failure has no reason to show


def _contest() -> coordinator_pb2.Run:
    """Three successes on a repository: one changed nothing (its agent answered in text),
    cheaper and faster than the others; one changed a file; and a job with no repo."""
    run = coordinator_pb2.Run(id="r9", status="success", repo_url="file:///repo")
    for index, (files, cost, branch) in enumerate(
        [((), 0.01, ""), (("a.py",), 0.50, "flota/r9/2"), (("b.py", "c.py"), 0.90, "flota/r9/3")], 1
    ):
        job = run.jobs.add(id=f"r9.{index}", name=f"task {index}", node_name="n1", status="success")
        job.result.CopyFrom(
            types_pb2.JobResult(
                status="success",
                branch=branch,
                base_commit="b" * 40,
                files_modified=list(files),
                insertions=len(files),
                cost_usd=cost,
                duration_s=index,
            )
        )
    return run


def test_a_success_that_changed_nothing_says_so_and_ranks_below_those_that_did() -> None:
    run = _contest()
    for table in (results_table(run), jobs_table(run)):
        lines = _render(table)
        rows = {line.split()[0]: line for line in lines[1:]}
        assert "no changes" in rows["r9.1"]
        assert "no changes" not in rows["r9.2"] and "no changes" not in rows["r9.3"]
    rows = compare_rows(run)
    assert [r["job"] for r in rows] == ["r9.2", "r9.3", "r9.1"]  # cheapest, but it changed nothing
    assert [r["no_changes"] for r in rows] == [False, False, True]
    assert "no changes" in _render(compare_table(rows))[3]


def test_jobs_without_a_repository_never_show_no_changes() -> None:
    run = coordinator_pb2.Run(id="r8", status="success")
    for index, cost in ((1, 0.5), (2, 0.1)):
        job = run.jobs.add(id=f"r8.{index}", name="echo hi", node_name="n1", status="success")
        job.result.CopyFrom(types_pb2.JobResult(status="success", cost_usd=cost))
    assert not any("no changes" in line for line in _render(results_table(run)) + _render(jobs_table(run)))
    rows = compare_rows(run)
    assert [r["job"] for r in rows] == ["r8.2", "r8.1"] and not any(r["no_changes"] for r in rows)
