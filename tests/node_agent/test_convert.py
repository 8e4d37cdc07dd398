"""node_agent/convert.py: every proto <-> model translation on the node, both ways, losslessly."""

from __future__ import annotations

import pytest

from node_agent import convert
from node_agent.models import Job, Repo, Result
from protos.contract import EndReason, ResultStatus
from protos.flota.v1 import types_pb2


def full_spec() -> types_pb2.JobSpec:
    spec = types_pb2.JobSpec(
        job_id="r1.0",
        run_id="r1",
        attempt_id="r1.0.a2",
        agent="llm",
        command="",
        prompt="fix it",
        model="openai/m",
        branch="flota/r1/0",
        timeout_s=30.5,
        env={"A": "1", "B": ""},
        name="fix",
        resume_branches=["flota/r1/0-a1", "flota/r1/0-a0"],
        secrets={"KEY": "v"},
        max_steps=12,
        budget_usd=0.5,
        api_base="http://127.0.0.1:1234/v1",
        check="make test",
        report_paths={"cost_usd": "usage.cost"},
        allow_empty=True,
    )
    spec.repo.CopyFrom(
        types_pb2.RepoSpec(url="/srv/r.git", base_ref="refs/flota/base/r1", base_commit="a" * 40)
    )
    spec.resources.CopyFrom(types_pb2.Resources(cpus=2.0, memory_mb=1024, gpus=1))
    return spec


def test_a_job_round_trips() -> None:
    spec = full_spec()
    job = convert.job_from_proto(spec)
    assert job.repo == Repo("/srv/r.git", "refs/flota/base/r1", "a" * 40)
    assert job.resume_branches == ("flota/r1/0-a1", "flota/r1/0-a0")
    assert convert.job_to_proto(job) == spec
    assert convert.job_from_bytes(convert.job_to_bytes(job)) == job


def test_unset_repo_and_resources_stay_unset() -> None:
    spec = types_pb2.JobSpec(job_id="r1.0", run_id="r1", attempt_id="r1.0.a1", agent="shell", command="true")
    job = convert.job_from_proto(spec)
    assert job.repo is None and job.resources is None
    back = convert.job_to_proto(job)
    assert not back.HasField("repo") and not back.HasField("resources")
    assert back == spec


def test_a_result_round_trips() -> None:
    wire = types_pb2.JobResult(
        job_id="r1.0",
        attempt_id="r1.0.a1",
        status="partial",
        exit_code=-1,
        branch="flota/r1/0",
        files_modified=["a", "b"],
        log_lines=["x"],
        log_lines_lost=3,
        log_lines_marked=2,
        cost_usd=0.25,
        check="failed",
        answer="done",
        reason="max_steps",
        metered=types_pb2.MeterUsage(
            calls=4, refused=1, tokens_in=40, cost_usd=0.0096, priced=True, note="n"
        ),
    )
    result = convert.result_from_proto(wire)
    assert result.metered is not None and (result.metered.calls, result.metered.refused) == (4, 1)
    assert result.status is ResultStatus.PARTIAL and result.files_modified == ("a", "b")
    assert result.reason is EndReason.MAX_STEPS
    assert convert.result_to_proto(result) == wire
    assert convert.result_from_bytes(convert.result_to_bytes(result)) == result


def test_a_result_without_a_meter_has_none() -> None:
    result = convert.result_from_proto(types_pb2.JobResult(status="success", cost_usd=0.5))
    assert result.metered is None and not convert.result_to_proto(result).HasField("metered")


def test_what_is_no_message_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        convert.job_from_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(ValueError):
        convert.result_from_proto(types_pb2.JobResult(status="exploded"))


def test_list_jobs_blanks_nothing_itself_and_marks_states() -> None:
    running = Job("r1.0", "r1", "r1.0.a1", command="sleep 1", secrets={"KEY": ""})
    done = Result("r1.1", "r1.1.a1", ResultStatus.SUCCESS)
    first, second = convert.node_jobs([running], [done])
    assert (first.state, first.spec.attempt_id, dict(first.spec.secrets)) == (
        "running",
        "r1.0.a1",
        {"KEY": ""},
    )
    assert (second.state, second.spec.attempt_id, second.result.status) == ("finished", "r1.1.a1", "success")
