"""A job of a graph with several dependencies starts from all their results: the others
merged, with real merges, into the worktree made at the first (`Workspace.prepare`).

A conflict fails the job before it starts, naming the files; the merge is aborted, so
the worktree is left as it was made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from node_agent.errors import WorkspaceError
from node_agent.git import Git, summarise

__all__ = ["IDENTITY", "merge_all"]

IDENTITY = {
    "GIT_AUTHOR_NAME": "flota",
    "GIT_AUTHOR_EMAIL": "flota@localhost",
    "GIT_COMMITTER_NAME": "flota",
    "GIT_COMMITTER_EMAIL": "flota@localhost",
}


def _short(ref: str) -> str:
    return ref.removeprefix("refs/heads/")


def merge_all(git: Git, worktree: Path, env: Mapping[str, str], merges: Sequence[tuple[str, str]]) -> str:
    """Merge each (ref, commit) of `merges` into the worktree's branch, in order; return
    the new head. `env` chooses the repository (GIT_DIR, GIT_COMMON_DIR, GIT_WORK_TREE)."""
    env = {**env, **IDENTITY}
    for ref, commit in merges:
        proc = git.run(
            [
                "merge",
                "--no-ff",
                "--no-edit",
                "--no-verify",
                "--no-gpg-sign",
                "-m",
                f"flota: merge {_short(ref)}",
                commit,
            ],
            worktree,
            env,
        )
        if proc.returncode == 0:
            continue
        listed = git.run(["diff", "--name-only", "--diff-filter=U", "-z"], worktree, env)
        files = [f for f in listed.stdout.decode("utf-8", "replace").split("\0") if f]
        git.run(["merge", "--abort"], worktree, env)
        if files:
            raise WorkspaceError(
                f"the dependencies' results conflict: merging {_short(ref)} ({commit[:12]}) "
                f"conflicts in {', '.join(files)}"
            )
        raise WorkspaceError(
            f"cannot merge {_short(ref)} ({commit[:12]}): {summarise(proc.stderr, proc.returncode)}"
        )
    return git.output(
        ["rev-parse", "--verify", "HEAD^{commit}"], worktree, env=env, what="cannot read the merged head"
    ).strip()
