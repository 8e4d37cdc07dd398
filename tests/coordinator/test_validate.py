"""coordinator/validate.py: the batch rules of a SubmitRun request (inputs, a run's budget,
the number of jobs), checked before anything is stored."""

from __future__ import annotations

import pytest

from coordinator.errors import InvalidRequest
from coordinator.validate import submission
from protos.flota.v1 import coordinator_pb2
from protos.limits import MAX_INPUT, MAX_JOBS


def request(*tasks: coordinator_pb2.TaskSpec, **kw: object) -> coordinator_pb2.SubmitRunRequest:
    return coordinator_pb2.SubmitRunRequest(
        tasks=list(tasks) or [coordinator_pb2.TaskSpec(command="true")],
        **kw,  # type: ignore[arg-type]
    )


def test_inputs_and_the_run_budget_are_taken_as_given() -> None:
    task = coordinator_pb2.TaskSpec(command="cat 'a b.md'", input="x" * MAX_INPUT, input_path="docs/a b.md")
    sub = submission(request(task, run_budget_usd=5.0, brief=True))
    assert (sub.tasks[0].input, sub.tasks[0].input_path) == ("x" * MAX_INPUT, "docs/a b.md")
    assert (sub.run_budget_usd, sub.brief) == (5.0, True)


def test_a_run_may_have_as_many_jobs_as_the_limit() -> None:
    many = [coordinator_pb2.TaskSpec(command="true")] * MAX_JOBS
    assert len(submission(request(*many)).tasks) == MAX_JOBS
    with pytest.raises(InvalidRequest, match=f"a run needs 1 to {MAX_JOBS} tasks"):
        submission(request(*many, coordinator_pb2.TaskSpec(command="true")))


@pytest.mark.parametrize(
    ("task", "kw", "why"),
    [
        (
            {"input": "é" * (MAX_INPUT // 2 + 1)},
            {},
            "a job's input is at most 65536 bytes",
        ),  # bytes, not chars
        ({"input": "a\0b"}, {}, "without NUL"),
        ({"input_path": "../secret"}, {}, "invalid input path '../secret'"),
        ({"input_path": "/etc/passwd"}, {}, "invalid input path"),
        ({"input_path": "a//b"}, {}, "invalid input path"),
        ({"input_path": "a/./b"}, {}, "invalid input path"),
        ({"input_path": "a\nb"}, {}, "invalid input path"),
        ({}, {"run_budget_usd": -1.0}, "the run's budget must be between 0"),
        ({}, {"run_budget_usd": float("nan")}, "the run's budget must be between 0"),
        ({}, {"run_budget_usd": 1e9}, "the run's budget must be between 0"),
    ],
)
def test_bad_batch_fields_are_refused(task: dict[str, str], kw: dict[str, float], why: str) -> None:
    with pytest.raises(InvalidRequest, match=why.replace("(", r"\(")):
        submission(request(coordinator_pb2.TaskSpec(command="true", **task), **kw))
