"""What the workspace accepts from a job spec before any git command sees it: job keys,
commits, refs and repository URLs (with `protos/limits.py`'s shared rules). Each check
raises WorkspaceError with one line."""

from __future__ import annotations

from node_agent.errors import WorkspaceError
from node_agent.git import is_local_url
from protos.limits import COMMIT_RE, CONTROL_RE, REF_RE, valid_id, valid_ref, valid_url

__all__ = ["check_commit", "check_job_key", "check_ref", "check_url"]


def check_job_key(job_key: str) -> str:
    if not valid_id(job_key):  # an attempt id: safe as a file name
        raise WorkspaceError(f"invalid job key {job_key!r}: use 1-100 of A-Z a-z 0-9 . _ -")
    return job_key


def check_commit(commit: str) -> None:
    if not COMMIT_RE.match(commit):
        raise WorkspaceError(f"invalid base commit {commit!r}: need a full lowercase hex object id")


def check_ref(name: str, kind: str) -> None:
    if not valid_ref(name, REF_RE):  # a leading '-' would be parsed as an option
        raise WorkspaceError(f"invalid {kind} {name!r}")


def check_url(url: str) -> None:
    if valid_url(url):
        return
    plain = url and not url.startswith("-") and not CONTROL_RE.search(url)
    # git runs inside the mirror, where a relative path would mean something else.
    if plain and is_local_url(url) and not url.startswith(("/", "file://")):
        raise WorkspaceError(f"invalid repository URL {url!r}: a local path must be absolute")
    raise WorkspaceError(f"invalid repository URL {url!r}")
