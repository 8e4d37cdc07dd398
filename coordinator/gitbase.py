"""Make a run's base commit reachable on the remote the nodes fetch from.

The base is pushed as `refs/flota/base/<run>`, so nodes fetch one known ref and never
need unadvertised-object fetches. `--from-working-tree` first records the working tree
(tracked changes and untracked files, minus ignored ones) as a commit on top of HEAD,
through a private index so the user's own index is untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import git

from coordinator.errors import RepoError
from coordinator.models import Repo

__all__ = ["push_base", "resolve_url"]

PUSH_TIMEOUT_S = 90  # under the CLI's deadline for SubmitRun, so a slow remote gets a real error


def _why(exc: git.GitCommandError) -> str:
    """git's own reason: its first `fatal:`/`error:` line, else its last line."""
    lines = [ln.strip().removeprefix("stderr:").strip(" '") for ln in str(exc.stderr or "").splitlines()]
    lines = [ln for ln in lines if ln]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[-1] if lines else f"git exited with {exc.status}"


def resolve_url(repo: git.Repo, remote: str) -> str:
    """A remote name or URL -> a URL any node can use (local paths made absolute)."""
    if remote.startswith("-"):
        raise RepoError(f"invalid remote {remote!r}")
    if "/" in remote or ":" in remote:
        url = remote
    else:
        try:
            url = next(repo.remote(remote).urls)
        except (ValueError, StopIteration) as exc:
            raise RepoError(
                f"the repository has no remote {remote!r}; add one (git remote add) or pass --remote URL"
            ) from exc
    if "://" in url or (":" in url.split("/")[0] and not os.path.isabs(url)):
        return url  # ssh://, https://, file:// or scp-like host:path
    path = Path(url)
    if not path.is_absolute():
        path = Path(repo.working_dir) / path
    return str(path.resolve())


def _working_tree_commit(repo: git.Repo, head: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        index = str(Path(tmp) / "index")
        with repo.git.custom_environment(GIT_INDEX_FILE=index):
            repo.git.read_tree(head)
            repo.git.add("-A")
            tree = repo.git.write_tree()
        if tree == repo.commit(head).tree.hexsha:
            return head
        with repo.git.custom_environment(
            GIT_AUTHOR_NAME="flota",
            GIT_AUTHOR_EMAIL="flota@localhost",
            GIT_COMMITTER_NAME="flota",
            GIT_COMMITTER_EMAIL="flota@localhost",
        ):
            return str(
                repo.git.commit_tree(tree, "-p", head, "-m", "flota: uncommitted changes of the working tree")
            )


def push_base(path: str, remote: str, ref: str, from_working_tree: bool, run_id: str) -> Repo:
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise RepoError(f"not a git repository: {path}") from exc
    try:
        url = resolve_url(repo, remote or "origin")
        try:
            if not repo.head.is_valid() and ref in ("", "HEAD"):
                raise RepoError(f"the repository {repo.working_dir} has no commits yet")
            base = repo.commit(ref or "HEAD").hexsha
            repo.git.cat_file("-e", f"{base}^{{commit}}")  # a well-formed id is not yet a commit
        # GitPython raises IndexError / NotImplementedError for revision syntax it does not
        # parse itself (@{-1}, HEAD@{yesterday}): to the user, all unknown revisions.
        except (git.BadName, ValueError, IndexError, NotImplementedError, git.GitCommandError) as exc:
            raise RepoError(f"unknown revision {ref or 'HEAD'!r} in {repo.working_dir}") from exc
        if from_working_tree:
            base = _working_tree_commit(repo, base)
        base_ref = f"refs/flota/base/{run_id}"
        try:
            repo.git.push(
                url,
                f"{base}:{base_ref}",
                env={"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"},
                kill_after_timeout=PUSH_TIMEOUT_S,
            )
        except git.GitCommandError as exc:
            raise RepoError(f"cannot push the base to {url}: {_why(exc)}") from exc
        return Repo(url=url, base_ref=base_ref, base_commit=base)
    except git.GitCommandError as exc:  # anything else git refused, e.g. recording the working tree
        raise RepoError(f"git failed in {repo.working_dir}: {_why(exc)}") from exc
    finally:
        repo.close()
