"""node_agent/servicer.py validate_spec: what a node refuses to run, and the line it says why."""

from __future__ import annotations

from typing import Any

import pytest

from node_agent.servicer import validate_spec
from protos.flota.v1 import types_pb2

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def spec(**kw: Any) -> types_pb2.JobSpec:
    """A valid spec, with the given fields replaced (`repo=None` drops the repo)."""
    fields: dict[str, Any] = {
        "job_id": "r1.0",
        "run_id": "r1",
        "attempt_id": "r1.0.a1",
        "agent": "shell",
        "command": "make test",
        "timeout_s": 60,
        "repo": types_pb2.RepoSpec(url="/srv/repo.git", base_ref="refs/flota/base/r1", base_commit=COMMIT),
        "branch": "flota/r1/0",
        "env": {"A": "1"},
    }
    fields.update(kw)
    if fields["repo"] is None:
        del fields["repo"]
    return types_pb2.JobSpec(**fields)


def repo(**kw: str) -> types_pb2.RepoSpec:
    fields = {"url": "/srv/repo.git", "base_ref": "refs/flota/base/r1", "base_commit": COMMIT}
    fields.update(kw)
    return types_pb2.RepoSpec(**fields)


ACCEPTED: dict[str, types_pb2.JobSpec] = {
    "full": spec(),
    "no-repo-no-branch": spec(repo=None, branch=""),
    "no-repo-any-branch-ignored": spec(repo=None, branch="whatever"),
    "timeout-zero-means-none": spec(timeout_s=0),
    "timeout-one-week": spec(timeout_s=7 * 86400),
    "ids-with-dots-dashes-underscores": spec(job_id="R_1.0-x", run_id="a", attempt_id="A.b-c_9"),
    "id-100-chars": spec(job_id="a" * 100),
    "sha256-commit": spec(repo=repo(base_commit="a" * 64)),
    "no-base-ref": spec(repo=repo(base_ref="")),
    "ssh-url": spec(repo=repo(url="ssh://git@example.com/team/repo.git")),
    "scp-url": spec(repo=repo(url="git@example.com:team/repo.git")),
    "nested-branch": spec(branch="flota/run-1/job.0/attempt_2"),
    "no-env": spec(env={}),
    "env-underscore": spec(env={"_X": "", "A_B_9": "x=y\nz"}),
    "env-128-chars": spec(env={"A" * 128: "1"}),
    "command-with-leading-space": spec(command="  true"),
    "graph-merges": spec(
        merges=[repo(base_ref="refs/heads/flota/r1/2"), repo(base_ref="refs/heads/flota/r1/3")]
    ),
    "ignore-paths": spec(agent="aider", ignore_paths=[".aider*", ".architect", "sub/.cache", "[ab].log"]),
    "input-text-and-path": spec(repo=None, branch="", input="a line ✓", input_path="docs/a b.md"),
    "input-at-the-cap": spec(input="x" * 65536),
}


@pytest.mark.parametrize("job", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(job: types_pb2.JobSpec) -> None:
    assert validate_spec(job) == ""


REJECTED: dict[str, tuple[types_pb2.JobSpec, str]] = {
    # ids
    "job-id-empty": (spec(job_id=""), "invalid job_id ''"),
    "ignore-path-absolute": (
        spec(ignore_paths=["/etc"]),
        "invalid ignore paths (relative globs, at most 32)",
    ),
    "ignore-path-up": (spec(ignore_paths=["a/../.."]), "invalid ignore paths (relative globs, at most 32)"),
    "ignore-path-magic": (
        spec(ignore_paths=[":(top)*"]),
        "invalid ignore paths (relative globs, at most 32)",
    ),
    "ignore-path-option": (spec(ignore_paths=["-f"]), "invalid ignore paths (relative globs, at most 32)"),
    "ignore-paths-too-many": (
        spec(ignore_paths=["a"] * 33),
        "invalid ignore paths (relative globs, at most 32)",
    ),
    "job-id-dotdot": (spec(job_id=".."), "invalid job_id '..'"),
    "job-id-dotdot-inside": (spec(job_id="a..b"), "invalid job_id 'a..b'"),
    "job-id-slash": (spec(job_id="a/b"), "invalid job_id 'a/b'"),
    "job-id-traversal": (spec(job_id="../etc"), "invalid job_id '../etc'"),
    "job-id-leading-dash": (spec(job_id="-rf"), "invalid job_id '-rf'"),
    "job-id-leading-dot": (spec(job_id=".hidden"), "invalid job_id '.hidden'"),
    "job-id-too-long": (spec(job_id="a" * 101), f"invalid job_id '{'a' * 101}'"),
    "job-id-space": (spec(job_id="a b"), "invalid job_id 'a b'"),
    "job-id-backslash": (spec(job_id="a\\b"), "invalid job_id 'a\\\\b'"),
    "run-id-slash": (spec(run_id="/"), "invalid run_id '/'"),
    "run-id-dotdot": (spec(run_id=".."), "invalid run_id '..'"),
    "attempt-id-empty": (spec(attempt_id=""), "invalid attempt_id ''"),
    "attempt-id-traversal": (spec(attempt_id="../x"), "invalid attempt_id '../x'"),
    "attempt-id-nul": (spec(attempt_id="a\x00b"), "invalid attempt_id 'a\\x00b'"),
    # agent, command, timeout
    "unknown-agent": (
        spec(agent="../bin/sh"),
        "unknown agent '../bin/sh' (shell, llm, or an agent CLI's name)",
    ),
    "empty-agent": (spec(agent=""), "unknown agent ''"),
    "llm-without-model": (spec(agent="llm", prompt="p"), "an llm job needs a prompt and a model"),
    "empty-command": (spec(command=""), "empty command"),
    "input-over-the-cap": (spec(input="é" * 32769), "input too long or with a NUL byte"),
    "input-nul": (spec(input="a\0b"), "input too long or with a NUL byte"),
    "input-path-up": (spec(input_path="../../etc/cron.d/x"), "invalid input path '../../etc/cron.d/x'"),
    "input-path-absolute": (spec(input_path="/etc/passwd"), "invalid input path '/etc/passwd'"),
    "blank-command": (spec(command=" \t\n"), "empty command"),
    "negative-timeout": (spec(timeout_s=-1), "timeout_s out of range"),
    "timeout-over-a-week": (spec(timeout_s=7 * 86400 + 1), "timeout_s out of range"),
    "timeout-nan": (spec(timeout_s=float("nan")), "timeout_s out of range"),
    "timeout-inf": (spec(timeout_s=float("inf")), "timeout_s out of range"),
    # a graph's merges
    "merges-without-repo": (spec(repo=None, merges=[repo()]), "too many merges, or merges without a repo"),
    "merges-too-many": (spec(merges=[repo()] * 101), "too many merges, or merges without a repo"),
    "merge-other-remote": (
        spec(merges=[repo(url="/srv/other.git")]),
        "a merge must be a full hex commit id on the job's own remote",
    ),
    "merge-short-commit": (
        spec(merges=[repo(base_commit="abc")]),
        "a merge must be a full hex commit id on the job's own remote",
    ),
    "merge-ref-option": (spec(merges=[repo(base_ref="--upload-pack=x")]), "invalid merge ref"),
    "merge-no-ref": (spec(merges=[repo(base_ref="")]), "invalid merge ref"),
    # repo
    "repo-url-missing": (spec(repo=repo(url="")), "repo url missing or invalid"),
    "repo-url-option": (spec(repo=repo(url="--upload-pack=touch /tmp/x")), "repo url missing or invalid"),
    "repo-url-dash": (spec(repo=repo(url="-")), "repo url missing or invalid"),
    "repo-empty-message": (spec(repo=types_pb2.RepoSpec()), "repo url missing or invalid"),
    "commit-missing": (spec(repo=repo(base_commit="")), "repo base_commit must be a full hex commit id"),
    "commit-short": (spec(repo=repo(base_commit=COMMIT[:12])), "repo base_commit must be a full hex"),
    "commit-39": (spec(repo=repo(base_commit=COMMIT[:39])), "repo base_commit must be a full hex"),
    "commit-41": (spec(repo=repo(base_commit=COMMIT + "a")), "repo base_commit must be a full hex"),
    "commit-uppercase": (spec(repo=repo(base_commit=COMMIT.upper())), "repo base_commit must be a full hex"),
    "commit-not-hex": (spec(repo=repo(base_commit="g" * 40)), "repo base_commit must be a full hex"),
    "commit-a-ref": (spec(repo=repo(base_commit="HEAD")), "repo base_commit must be a full hex"),
    "commit-newline": (spec(repo=repo(base_commit=COMMIT + "\n")), "repo base_commit must be a full hex"),
    "base-ref-not-under-refs": (spec(repo=repo(base_ref="main")), "invalid repo base_ref"),
    "base-ref-option": (spec(repo=repo(base_ref="--force")), "invalid repo base_ref"),
    "base-ref-space": (spec(repo=repo(base_ref="refs/heads/a b")), "invalid repo base_ref"),
    "base-ref-colon": (spec(repo=repo(base_ref="refs/heads/a:b")), "invalid repo base_ref"),
    "base-ref-only-prefix": (spec(repo=repo(base_ref="refs/")), "invalid repo base_ref"),
    "branch-missing": (spec(branch=""), "invalid branch ''"),
    "branch-not-under-flota": (spec(branch="main"), "invalid branch 'main'"),
    "branch-flota-only": (spec(branch="flota/"), "invalid branch 'flota/'"),
    "branch-other-prefix": (spec(branch="refs/heads/flota/x"), "invalid branch 'refs/heads/flota/x'"),
    "branch-dotdot": (spec(branch="flota/../main"), "invalid branch 'flota/../main'"),
    "branch-dotdot-inside": (spec(branch="flota/a..b"), "invalid branch 'flota/a..b'"),
    "branch-space": (spec(branch="flota/a b"), "invalid branch 'flota/a b'"),
    "branch-colon": (spec(branch="flota/a:main"), "invalid branch 'flota/a:main'"),
    "branch-tilde": (spec(branch="flota/a~1"), "invalid branch 'flota/a~1'"),
    "branch-too-long": (spec(branch="flota/" + "a" * 201), "invalid branch"),
    # env
    "env-leading-digit": (spec(env={"1A": "x"}), "invalid environment variable name '1A'"),
    "env-dash": (spec(env={"A-B": "x"}), "invalid environment variable name 'A-B'"),
    "env-equals": (spec(env={"A=B": "x"}), "invalid environment variable name 'A=B'"),
    "env-empty": (spec(env={"": "x"}), "invalid environment variable name ''"),
    "env-space": (spec(env={"A B": "x"}), "invalid environment variable name 'A B'"),
    "env-newline": (spec(env={"A\n": "x"}), "invalid environment variable name 'A\\n'"),
    "env-too-long": (spec(env={"A" * 129: "x"}), "invalid environment variable name"),
}


@pytest.mark.parametrize(("job", "message"), REJECTED.values(), ids=REJECTED.keys())
def test_rejected(job: types_pb2.JobSpec, message: str) -> None:
    problem = validate_spec(job)
    assert problem.startswith(message), problem
    assert "\n" not in problem


def test_ids_are_checked_before_anything_else() -> None:
    problem = validate_spec(spec(job_id="..", agent="nope", command="", timeout_s=-1))
    assert problem == "invalid job_id '..'"


@pytest.mark.parametrize(
    "job",
    [
        spec(job_id="r1.0\n"),
        spec(run_id="r1\n"),
        spec(attempt_id="r1.0.a1\n"),
        spec(branch="flota/r1/0\n"),
    ],
    ids=["job_id", "run_id", "attempt_id", "branch"],
)
def test_trailing_newline_rejected(job: types_pb2.JobSpec) -> None:
    assert validate_spec(job) != ""


def test_base_ref_with_dotdot_rejected() -> None:
    assert validate_spec(spec(repo=repo(base_ref="refs/heads/../../config"))) == "invalid repo base_ref"
