"""A job's change for the page: the files and the unified diff of its branch against its
base, as `flota diff JOB` computes them (`git diff BASE HEAD`, the user's git and
configuration), in a bare repository of the dashboard's own (a temporary directory) that
fetches each job's branch from its run's remote the first time it is asked for.

The same refusals as `flota diff` (cli/checkout.py `job_branch`): a job still running, one
of a run without a repository, one that ended without a branch; git's reason in one line.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any

from cli.checkout import JobBranch, git_reason, job_branch
from cli.client import CliError
from protos.flota.v1 import coordinator_pb2 as pb

__all__ = ["Diffs", "MAX_DIFF_CHARS", "MAX_FILES"]

MAX_DIFF_CHARS = 2_000_000  # a longer diff is cut (the page says so; `flota diff` has it all)
MAX_FILES = 2_000
FETCH_TIMEOUT_S = 120.0
_STATUS = {"A": "added", "D": "deleted", "M": "modified", "R": "renamed", "C": "copied", "T": "type changed"}


class Diffs:
    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="flota-dashboard-")
        self._lock = asyncio.Lock()  # one fetch at a time into the one repository
        self._ready = False

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    async def of(self, job: pb.Job, repo_url: str) -> dict[str, Any]:
        r = job_branch(job, repo_url)
        if not (r.base and r.head):
            raise CliError(f"job {r.job_id} has no recorded commits to compare")
        async with self._lock:
            if not self._ready:
                await self._git(
                    "init", "--quiet", "--bare", self._dir, what="cannot make the diff repository"
                )
                self._ready = True
            if not await self._has(r.head) or not await self._has(r.base):
                await self._fetch(r)
        statuses = await self._git("diff", "--name-status", "-z", "-M", r.base, r.head)
        numbers = await self._git("diff", "--numstat", "-z", "-M", r.base, r.head)
        text = await self._git("diff", "--no-color", "--no-ext-diff", "-M", r.base, r.head)
        return {
            "job": r.job_id,
            "branch": r.branch,
            "base_commit": r.base,
            "head_commit": r.head,
            "files": _files(statuses, numbers)[:MAX_FILES],
            "diff": text[:MAX_DIFF_CHARS],
            "truncated": len(text) > MAX_DIFF_CHARS,
        }

    async def _fetch(self, r: JobBranch) -> None:
        ref = f"refs/heads/{r.branch}"
        await self._git(
            "fetch", "--quiet", "--no-tags", "--", r.url, f"+{ref}:refs/jobs/{r.job_id}",
            what=f"cannot fetch {r.branch} from {r.url}",
        )  # fmt: skip
        if not await self._has(r.head):
            raise CliError(
                f"the remote's {r.branch} no longer holds the job's result {r.head[:12]} (it was moved)"
            )

    async def _has(self, commit: str) -> bool:
        proc = await self._spawn("cat-file", "-e", f"{commit}^{{commit}}")
        await proc.communicate()
        return proc.returncode == 0

    async def _spawn(self, *args: str) -> asyncio.subprocess.Process:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # a remote that asks for a password fails
        try:
            return await asyncio.create_subprocess_exec(
                "git", "--git-dir", self._dir, *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
        except FileNotFoundError:
            raise CliError("git is not installed (the dashboard's diffs run your git)") from None

    async def _git(self, *args: str, what: str = "") -> str:
        proc = await self._spawn(*args)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), FETCH_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise CliError(f"{what or 'git ' + args[0]}: no answer within {FETCH_TIMEOUT_S:g} s") from None
        if proc.returncode != 0:
            raise CliError(
                f"{what or 'git ' + args[0] + ' failed'}: {git_reason(err.decode(errors='replace'))}"
            )
        return out.decode(errors="replace")


def _files(statuses: str, numbers: str) -> list[dict[str, Any]]:
    """`--name-status -z` and `--numstat -z` read together: one entry per file."""
    counts: list[tuple[str, str]] = []
    parts = numbers.split("\0")
    i = 0
    while i < len(parts) - 1:
        added, deleted, path = (parts[i].split("\t", 2) + ["", ""])[:3]
        if path == "":  # a rename: the two paths follow
            i += 2
        counts.append((added, deleted))
        i += 1
    files: list[dict[str, Any]] = []
    parts = statuses.split("\0")
    i = 0
    while i < len(parts) - 1:
        letter = parts[i][:1]
        if letter in ("R", "C"):
            old, path = parts[i + 1], parts[i + 2]
            i += 3
        else:
            old, path = "", parts[i + 1]
            i += 2
        added, deleted = counts[len(files)] if len(files) < len(counts) else ("", "")
        files.append(
            {
                "path": path,
                "old_path": old,
                "status": _STATUS.get(letter, letter),
                "insertions": int(added) if added.isdigit() else None,  # None: a binary file
                "deletions": int(deleted) if deleted.isdigit() else None,
            }
        )
    return files
