"""Batch runs on a local fleet: `flota run TEMPLATE --each GLOB | --inputs FILE|-`, one job
per input with its placeholders filled and quoted, `flota results --format`, the bad-input
lines, an llm batch against the loopback model server, and a run's total budget."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_openai import FakeOpenAI, call
from tests.fleet import Fleet, make_repo

pytestmark = pytest.mark.timeout(240)

# Inputs a shell would take apart if they were pasted in unquoted.
NASTY = [
    "two words",
    "it's \"quoted\" and 'single'",
    "$(touch {pwned}) and `touch {pwned}`",
    "ünïcødé ✓ 日本語",
    "  spaces around  ",
    "semi; colon && echo no | cat > x",
    "--looks-like-an-option",
    "{input} ${HOME} \\back\\slash",
]


@pytest.fixture(scope="module")
def shells(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One coordinator and one node with two slots, for every shell batch of this file."""
    f = Fleet(tmp_path_factory.mktemp("batch") / "home")
    try:
        f.start_coordinator()
        f.start_node("worker", "--slots", "2")
        yield f
    finally:
        f.close()


def _submit(fleet: Fleet, *args: str, **kw: Any) -> dict[str, Any]:
    result = fleet.flota("--json", "run", *args, "--follow", **kw)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def _rows(fleet: Fleet, run_id: str, fmt: str = "jsonl") -> list[dict[str, Any]]:
    out = fleet.flota("results", run_id, "--format", fmt)
    assert "Traceback" not in out.stderr, out.stderr
    if fmt == "jsonl":
        return [json.loads(line) for line in out.stdout.splitlines()]
    return list(csv.DictReader(io.StringIO(out.stdout)))


def test_inputs_one_job_per_line_each_filled_quoted_and_in_flota_input(shells: Fleet, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    lines = [line.replace("{pwned}", str(pwned)) for line in NASTY]
    source = tmp_path / "ids.txt"
    source.write_text("\n".join(lines[:4]) + "\n\n" + "\n".join(lines[4:]) + "\n")  # a blank line: no input
    # {input} as an argument, and the same text in the file $FLOTA_INPUT names.
    run = _submit(shells, "printf '[%s]\\n' {input}; cat \"$FLOTA_INPUT\"", "--inputs", str(source))
    assert run["status"] == "success", run
    assert len(run["jobs"]) == len(lines)
    assert not pwned.exists(), "an input was run as shell code"

    rows = _rows(shells, run["id"])
    assert [r["input"] for r in rows] == lines  # input order, verbatim
    assert [r["job"] for r in rows] == [f"{run['id']}.{i}" for i in range(1, len(lines) + 1)]
    for row, line in zip(rows, lines, strict=True):
        assert row["status"] == "success"
        assert row["answer"] == f"[{line}]\n{line}", row  # the stdout tail
        assert row["reason"] == ""

    as_csv = _rows(shells, run["id"], "csv")
    assert [r["input"] for r in as_csv] == lines
    assert [r["answer"] for r in as_csv] == [r["answer"] for r in rows]

    md = shells.flota("results", run["id"], "--format", "md").stdout.splitlines()
    assert md[0].startswith("| job | input | model | status | answer |")
    assert len(md) == 2 + len(lines)
    assert "| two words |" in md[2] and "[two words]<br>two words" in md[2]
    assert "semi; colon && echo no \\| cat > x" in md[7]  # a pipe in a cell is escaped

    out = tmp_path / "results.csv"
    written = shells.flota("results", run["id"], "--format", "csv", "--output", str(out))
    assert written.returncode == 0 and f"{len(lines)} rows written" in written.stdout
    assert [r["input"] for r in csv.DictReader(io.StringIO(out.read_text()))] == lines


def test_jsonl_fields_and_stdin(shells: Fleet, tmp_path: Path) -> None:
    objects = [
        {"id": 1, "text": "it's a $(trap)", "tag": "a b"},
        {"id": 2, "text": "naïve “quotes”", "tag": None},
        {"id": 3, "text": "", "tag": ["x", 1]},
    ]
    source = tmp_path / "tickets.jsonl"
    source.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects))
    run = _submit(shells, "printf '%s|%s|%s' {id} {text} {tag}", "--inputs", str(source))
    assert run["status"] == "success", run
    rows = _rows(shells, run["id"])
    assert [r["answer"] for r in rows] == ["1|it's a $(trap)|a b", "2|naïve “quotes”|null", '3||["x", 1]']
    assert [json.loads(r["input"]) for r in rows] == objects  # each row's input is its object

    # `-` reads stdin: lines, and JSON lines with --jsonl.
    run = _submit(shells, "echo {input}", "--inputs", "-", input_text="first one\nsecond\n")
    assert [r["answer"] for r in _rows(shells, run["id"])] == ["first one", "second"]
    run = _submit(
        shells, "echo {name}", "--inputs", "-", "--jsonl", input_text='{"name": "n1"}\n{"name": "n 2"}\n'
    )
    assert [r["answer"] for r in _rows(shells, run["id"])] == ["n1", "n 2"]

    # With --models: each input with each model, input by input.
    run = _submit(shells, "echo {input}", "--inputs", "-", "--models", "m1,m2", input_text="x\ny\n")
    rows = _rows(shells, run["id"])
    assert [(r["input"], r["model"], r["answer"]) for r in rows] == [
        ("x", "m1", "x"),
        ("x", "m2", "x"),
        ("y", "m1", "y"),
        ("y", "m2", "y"),
    ]


def test_each_in_a_repository_each_job_sees_its_file(shells: Fleet, tmp_path: Path) -> None:
    files = {
        "docs/a.md": "alpha\n",
        "docs/sub/b c.md": "beta with space\n",
        "docs/sub/deep/it's.md": "gamma\n",
        "docs/skip.txt": "not markdown\n",
        "README.md": "top\n",
    }
    work, _ = make_repo(tmp_path / "repo", files)
    run = _submit(
        shells,
        'test -f {input} && cat {input} && test "$(cat "$FLOTA_INPUT")" = "$(cat {input})"',
        "--each",
        "docs/**/*.md",
        "--repo",
        str(work),
    )
    assert run["status"] == "success", run
    rows = _rows(shells, run["id"])
    assert [r["input"] for r in rows] == ["docs/a.md", "docs/sub/b c.md", "docs/sub/deep/it's.md"]
    assert [r["answer"] for r in rows] == ["alpha", "beta with space", "gamma"]


def test_each_without_a_repository_sends_each_files_text(shells: Fleet, tmp_path: Path) -> None:
    here = tmp_path / "local"
    (here / "notes").mkdir(parents=True)
    (here / "notes" / "one.txt").write_text("first file\n")
    (here / "notes" / "two.txt").write_text("second ✓\n")
    run = _submit(shells, 'cat {input}; wc -c < "$FLOTA_INPUT"', "--each", "notes/*.txt", cwd=here)
    assert run["status"] == "success", run
    rows = _rows(shells, run["id"])
    assert [r["input"] for r in rows] == ["notes/one.txt", "notes/two.txt"]
    assert [r["answer"] for r in rows] == ["first file\n11", "second ✓\n11"]


def test_every_bad_input_is_one_line_and_submits_nothing(shells: Fleet, tmp_path: Path) -> None:
    work, _ = make_repo(tmp_path / "repo", {"docs/a.md": "a\n"})
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    missing_field = tmp_path / "m.jsonl"
    missing_field.write_text('{"text": "ok"}\n{"other": "no text"}\n')
    not_json = tmp_path / "bad.jsonl"
    not_json.write_text('{"text": "ok"}\nnot json\n')
    not_object = tmp_path / "list.jsonl"
    not_object.write_text('["a"]\n')
    big = tmp_path / "big.txt"
    big.write_text("small\n" + "x" * 70_000 + "\n")
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "huge.txt").write_text("y" * 70_000)
    (tmp_path / "local" / "many").mkdir()
    for i in range(70):  # each under the cap, together over the one request's 4 MiB
        (tmp_path / "local" / "many" / f"{i}.dat").write_text("z" * 60_000)
    cases: list[tuple[tuple[str, ...], str, str | None]] = [
        (("--each", "docs/[a", "--repo", str(work)), "a [ without its ]", None),
        (("--each", "../*.md", "--repo", str(work)), "invalid glob", None),
        (("--each", "src/*.py", "--repo", str(work)), "no file matches 'src/*.py'", None),
        (("--each", "*.nothing"), "no file matches", None),
        (("--each", "*.txt"), "huge.txt is 70000 bytes", None),
        (("--each", "many/*.dat"), "the 70 inputs make a request of 4.2 MB", None),
        (("--inputs", str(empty)), "has no inputs", None),
        (("--inputs", str(blank)), "has no inputs", None),
        (("--inputs", "-"), "stdin has no inputs", ""),
        (("--inputs", str(missing_field)), f"line 2 of {missing_field} has no field 'text'", None),
        (("--inputs", str(not_json)), f"line 2 of {not_json} is not JSON", None),
        (("--inputs", str(not_object)), "is not a JSON object", None),
        (("--inputs", str(big)), f"line 2 of {big} is over 65536 bytes", None),
        (("--inputs", str(tmp_path / "nope.txt")), "cannot read", None),
        (("--inputs", str(empty), "--each", "*.md"), "not both", None),
        (("--inputs", str(blank), "-t", "echo second"), "one task template, not 2", None),
        (("--jsonl",), "--jsonl reads --inputs", None),
    ]
    before = len(shells.json("status", check=True))
    for args, expected, stdin in cases:
        result = shells.flota("run", "echo {text}", *args, cwd=tmp_path / "local", input_text=stdin)
        assert result.returncode != 0, (args, result.stdout)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("flota: "), (args, result.stderr)
        assert expected in lines[0], (args, lines[0])
    assert len(shells.json("status", check=True)) == before, "a bad input submitted a run"


def test_llm_batch_collects_each_answer(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("gpu")  # one slot: the jobs run in input order
    source = tmp_path / "tickets.jsonl"
    source.write_text('{"text": "printer on fire"}\n{"text": "cannot log in"}\n{"text": "refund, please"}\n')
    answers = ["hardware", "account", "billing"]
    with FakeOpenAI([call("finish", summary=a) for a in answers]) as server:
        run = _submit(
            fleet,
            "classify this ticket: {text}",
            "--inputs",
            str(source),
            "--agent",
            "llm",
            "--model",
            "openai/gpt-4o-mini",
            "--api-base",
            server.base_url,
        )
        prompts = [json.dumps(r["messages"]) for r in server.requests]
    assert run["status"] == "success", run
    assert len(prompts) == 3
    for prompt, text in zip(prompts, ["printer on fire", "cannot log in", "refund, please"], strict=True):
        assert f"classify this ticket: {text}" in prompt
    rows = _rows(fleet, run["id"])
    assert [r["answer"] for r in rows] == answers
    assert [r["model"] for r in rows] == ["openai/gpt-4o-mini"] * 3
    assert all(r["tokens_in"] == 10 and r["tokens_out"] == 5 and r["cost_usd"] > 0 for r in rows)


def test_the_run_budget_stops_new_jobs_once_spent(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("gpu")  # one slot: one job at a time, each seeing what the last spent
    # gpt-4o-mini at $0.15 per million input tokens: 100,000 tokens is $0.015 a job.
    reply = call("finish", summary="done", usage=(100_000, 0))
    with FakeOpenAI(default=reply) as server:
        run = _submit(
            fleet,
            "say {input}",
            "--inputs",
            "-",
            "--agent",
            "llm",
            "--model",
            "openai/gpt-4o-mini",
            "--api-base",
            server.base_url,
            "--budget",
            "0.02",
            input_text="".join(f"item {i}\n" for i in range(1, 7)),
        )
        requests = len(server.requests)
    # The first job leaves $0.005; the second spends it (and more); the other four never start.
    assert requests == 2
    assert run["status"] == "cancelled"
    assert run["reason"].startswith("the run's budget of $0.02 is spent")
    assert run["budget"]["limit_usd"] == 0.02
    assert run["budget"]["spent_usd"] == pytest.approx(0.03)
    rows = _rows(fleet, run["id"])
    assert [r["status"] for r in rows] == ["success"] * 2 + ["cancelled"] * 4
    assert all(r["reason"].startswith("not started: the run's budget of $0.02 is spent") for r in rows[2:])
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(0.03)
    # A retry of a spent run is refused, in one line.
    again = fleet.flota("retry", run["id"], "--failed")
    assert again.returncode != 0 and "budget of $0.02 is spent" in again.stderr


def test_a_run_too_big_for_one_message_lists_brief_jobs_and_results_stream_them(
    shells: Fleet, tmp_path: Path
) -> None:
    count = 1001  # one more than protos.limits.MAX_FULL_RUN_JOBS
    source = tmp_path / "many.txt"
    source.write_text("".join(f"line {i}\n" for i in range(count)))
    # Pinned to a label no node has: every job stays queued, nothing runs.
    submitted = shells.json(
        "run", "echo {input}", "--inputs", str(source), "--label", "never=here", check=True
    )
    assert len(submitted["jobs"]) == count and submitted["jobs"][0]["command"] == ""  # a batch's reply
    try:
        run = shells.json("status", submitted["id"], check=True)
        assert len(run["jobs"]) == count
        assert {j["command"] for j in run["jobs"]} == {""}  # brief: whole, they might not fit
        assert run["jobs"][0]["wait_reason"] == "no node with label never=here"
        rows = _rows(shells, run["id"])
        assert [r["input"] for r in rows] == [f"line {i}" for i in range(count)]
        assert {r["status"] for r in rows} == {"queued"}
        assert {r["reason"] for r in rows} == {"no node with label never=here"}
        # `results` (its JSON) lists every job too.
        listed = shells.json("results", run["id"])
        assert len(listed) == count and listed[-1]["job"] == f"{run['id']}.{count}"
    finally:
        shells.flota("cancel", submitted["id"], check=True)
