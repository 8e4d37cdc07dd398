"""`flota checkout|diff`: a job's result branch, in the user's own repository.

The branch (`flota/<run>/<n>`, `-a<N>` for a later attempt) is fetched from the run's
remote: through the repository's own remote with that URL when it has one (the branch then
tracks it, so `git pull` and `git push` work on it), else from the URL itself. git makes
every change and refuses what would lose work (local changes a switch would overwrite, a
branch checked out in another worktree, a worktree directory already in use): flota says
git's reason in one line and changes nothing more. A local branch of that name is only
ever fast-forwarded; one with commits of its own is left alone.

git runs with the user's environment and configuration, as the user's own git would:
`flota diff` is `git diff BASE HEAD`, pager, colors and all. A job that changed nothing
has no branch (its result is its base): `flota checkout` says so, `flota diff` is empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Annotated

import typer

from cli.client import Client, CliError
from cli.options import options
from cli.render import console, no_changes, print_json
from protos.flota.v1 import coordinator_pb2

__all__ = ["JobBranch", "checkout", "diff", "diff_text", "git_reason", "job_branch"]

_ACTIVE = ("waiting", "queued", "dispatching", "running")
_MAX_FILES = 10  # files named in a one-line reason


@dataclass(frozen=True, slots=True)
class JobBranch:
    job_id: str
    branch: str
    base: str
    head: str
    url: str


def _result(client: Client, job_id: str, unchanged_ok: bool = False) -> JobBranch:
    """The job's branch and commits, and its run's remote; CliError when it has no branch."""
    if "." not in job_id:
        raise CliError(f"{job_id!r} is a run; name one of its jobs (flota status {job_id})")
    job = client.get_job(job_id)
    url = "" if job.status in _ACTIVE else client.get_run(job.run_id).repo_url
    return job_branch(job, url, unchanged_ok)


def job_branch(job: coordinator_pb2.Job, url: str, unchanged_ok: bool = False) -> JobBranch:
    """The job's branch and commits on its run's remote `url`; CliError when it has none
    (yet). With ``unchanged_ok``, a job that changed nothing has a branch and head of ""."""
    if job.status in _ACTIVE:
        raise CliError(f"job {job.id} is still {job.status}: it has no branch yet (flota status {job.id})")
    if not url:
        raise CliError(f"job {job.id} ran without a repository (flota run --repo): it has no branch")
    branch = job.branch or job.result.branch
    if not branch and job.status == "success" and no_changes(job):
        if unchanged_ok:
            return JobBranch(job.id, "", job.result.base_commit, "", url)
        raise CliError(
            f"job {job.id} changed nothing: no branch was pushed (its result is its base, "
            f"{job.result.base_commit[:12]})"
        )
    if not branch:
        error = job.result.error.strip().splitlines()
        why = f": {error[0]}" if error else ""
        raise CliError(f"job {job.id} ended {job.status} without a branch{why}")
    return JobBranch(job.id, branch, job.result.base_commit, job.result.head_commit, url)


def git_reason(stderr: str) -> str:
    """git's reason in one line: its first error (with the files it lists), else its first word."""
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("hint:")]
    if not lines:
        return "git failed"
    first = next((i for i, ln in enumerate(lines) if ln.startswith(("error: ", "fatal: "))), 0)
    reason = lines[first].removeprefix("error: ").removeprefix("fatal: ")
    files = []
    for line in lines[first + 1 :]:
        if not line.startswith("\t"):
            break
        files.append(line.strip())
    if files:
        more = " ..." if len(files) > _MAX_FILES else ""
        reason = f"{reason.rstrip(':')}: {', '.join(files[:_MAX_FILES])}{more}"
    return reason


def _proc(repo: str, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, errors="replace")
    except FileNotFoundError:
        raise CliError("git is not installed (flota checkout and diff run your git)") from None


def _git(repo: str, *args: str, what: str = "") -> str:
    """Run git in `repo`; its output, or CliError with `what` and git's reason."""
    proc = _proc(repo, *args)
    if proc.returncode != 0:
        raise CliError(f"{what or 'git ' + args[0] + ' failed'}: {git_reason(proc.stderr)}")
    return proc.stdout


def _ok(repo: str, *args: str) -> bool:
    """Whether a git question (rev-parse --verify, merge-base --is-ancestor ...) says yes."""
    return _proc(repo, *args).returncode == 0


def _repository(path: str) -> str:
    if not os.path.isdir(path):
        raise CliError(f"no such directory: {path}")
    if not _ok(path, "rev-parse", "--git-dir"):
        raise CliError(f"{os.path.abspath(path)} is not in a git repository (--repo DIR names one)")
    top = _proc(path, "rev-parse", "--show-toplevel")
    return top.stdout.strip() if top.returncode == 0 else os.path.abspath(path)


def _place(url: str, repo: str) -> str:
    """A remote URL as a comparable place: local paths resolved, others as written."""
    url = url.strip()
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    elif "://" in url or (":" in url.split("/")[0] and not os.path.isabs(url)):
        return url.rstrip("/")  # ssh://, https://, or scp-like host:path
    return os.path.realpath(os.path.join(repo, url))


def _remote_for(repo: str, url: str) -> str:
    """The name of the repository's remote that fetches from `url`, or ""."""
    want = _place(url, repo)
    for name in _git(repo, "remote").split():
        urls = _proc(repo, "remote", "get-url", "--all", name).stdout.splitlines()
        if any(_place(u, repo) == want for u in urls if u.strip()):
            return name
    return ""


def _fetch(repo: str, r: JobBranch) -> tuple[str, str]:
    """Fetch the branch; (its tip, the remote it came through or "")."""
    remote = _remote_for(repo, r.url)
    source = remote or r.url
    what = f"cannot fetch {r.branch} from {source}"
    if remote:
        tracking = f"refs/remotes/{remote}/{r.branch}"
        _git(repo, "fetch", "--quiet", remote, f"+refs/heads/{r.branch}:{tracking}", what=what)
        return _git(repo, "rev-parse", "--verify", f"{tracking}^{{commit}}").strip(), remote
    _git(repo, "fetch", "--quiet", r.url, f"refs/heads/{r.branch}", what=what)
    return _git(repo, "rev-parse", "--verify", "FETCH_HEAD^{commit}").strip(), ""


def checkout(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    repo: Annotated[
        str | None, typer.Option(help="The repository (default: the one the current directory is in).")
    ] = None,
    worktree: Annotated[
        str | None, typer.Option(metavar="DIR", help="Check the branch out in a new worktree DIR instead.")
    ] = None,
) -> None:
    """Fetch a job's result branch into your repository and switch to it (or --worktree DIR)."""
    o = options(ctx)
    r = _result(o.client(), job_id)
    top = _repository(repo or ".")
    tip, remote = _fetch(top, r)
    b = r.branch
    mine = _proc(top, "rev-parse", "--verify", "--quiet", f"refs/heads/{b}^{{commit}}").stdout.strip()
    if not mine:
        local = "created"
    elif mine == tip:
        local = "unchanged"
    elif _ok(top, "merge-base", "--is-ancestor", tip, mine):
        local = "ahead"  # the user's own commits on top of the result: kept
    elif _ok(top, "merge-base", "--is-ancestor", mine, tip):
        local = "fast-forwarded"
    else:
        raise CliError(
            f"your branch {b} and the job's result {tip[:12]} have both moved on; "
            f"left as it is (compare: git log --oneline {b}...{tip[:12]})"
        )
    head = _proc(top, "symbolic-ref", "-q", "HEAD").stdout.strip()
    current = worktree is None and head == f"refs/heads/{b}"
    start = [f"{remote}/{b}"] if remote else [tip]
    track = ["--track"] if remote else []
    if local == "fast-forwarded" and not current:
        # git refuses to move a branch checked out in another worktree: then nothing moved.
        _git(top, "branch", "--force", b, tip, what=f"cannot update your branch {b}")
    if worktree is not None:
        path = os.path.abspath(worktree)
        what = f"cannot check {b} out in {path}"
        if local == "created":
            _git(top, "worktree", "add", "--quiet", *track, "-b", b, path, *start, what=what)
        else:
            _git(top, "worktree", "add", "--quiet", path, b, what=what)
    else:
        path = top
        what = f"git would not switch to {b}"
        if local == "created":
            _git(top, "switch", "--quiet", "-c", b, *track, *start, what=what)
        elif current and local == "fast-forwarded":
            _git(top, "merge", "--quiet", "--ff-only", tip, what=f"cannot fast-forward {b}")
        elif not current:
            _git(top, "switch", "--quiet", b, what=what)
    now = _git(top, "rev-parse", "--verify", f"refs/heads/{b}^{{commit}}").strip()
    if o.json:
        shown = {"job": r.job_id, "branch": b, "commit": now, "result": tip, "path": path}
        print_json({**shown, "worktree": worktree is not None, "local": local})
        return
    said = {
        "created": "",
        "unchanged": "",
        "fast-forwarded": " (your branch was fast-forwarded to it)",
        "ahead": f" (your branch is ahead of the job's result {tip[:12]}: kept as it is)",
    }[local]
    where = f"checked {b} out in {path}" if worktree is not None else f"switched to {b} in {path}"
    console.print(f"{where} at {now[:12]}{said}")


def _commits_here(client: Client, job_id: str, repo: str | None) -> tuple[JobBranch, str]:
    """The job's result, and the repository (at `repo` or around the current directory)
    that now holds both its commits (fetched when missing); for a job that changed
    nothing, no repository (there is nothing to compare)."""
    r = _result(client, job_id, unchanged_ok=True)
    if not r.branch:
        return r, ""
    if not (r.base and r.head):
        raise CliError(f"job {r.job_id} has no recorded commits to compare")
    top = _repository(repo or ".")
    missing = [c for c in (r.base, r.head) if not _ok(top, "cat-file", "-e", f"{c}^{{commit}}")]
    if missing:
        _fetch(top, r)
        if not _ok(top, "cat-file", "-e", f"{r.head}^{{commit}}"):
            raise CliError(
                f"the remote's {r.branch} no longer holds the job's result {r.head[:12]} (it was moved)"
            )
    return r, top


def diff_text(client: Client, job_id: str, repo: str | None = None) -> str:
    """A job's change as `git diff --stat` then the patch, uncoloured (for a view to show)."""
    r, top = _commits_here(client, job_id, repo)
    if not r.branch:
        return ""  # it changed nothing
    return _git(top, "diff", "--no-color", "--stat", "--patch", r.base, r.head)


def diff(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    stat: Annotated[bool, typer.Option("--stat", help="Only the summary: files and lines changed.")] = False,
    no_pager: Annotated[bool, typer.Option("--no-pager", help="Print it all, without git's pager.")] = False,
    repo: Annotated[
        str | None, typer.Option(help="The repository (default: the one the current directory is in).")
    ] = None,
) -> None:
    """A job's change against its base: `git diff BASE HEAD`, through your pager."""
    o = options(ctx)
    r, top = _commits_here(o.client(), job_id, repo)
    if not r.branch:  # it changed nothing: an empty diff, as git's own
        if o.json:
            print_json({"job": r.job_id, "branch": "", "base_commit": r.base, "head_commit": "", "diff": ""})
        return
    args = ["diff", *(["--stat"] if stat else []), r.base, r.head]
    if o.json:
        text = _git(top, "diff", "--no-color", *args[1:])  # captured: no pager
        print_json(
            {"job": r.job_id, "branch": r.branch, "base_commit": r.base, "head_commit": r.head, "diff": text}
        )
        return
    sys.stdout.flush()
    try:  # the terminal is git's: its pager, its colors, as `git diff` run here would have them
        code = subprocess.run(["git", "-C", top, *(["--no-pager"] if no_pager else []), *args]).returncode
    except FileNotFoundError:
        raise CliError("git is not installed (flota checkout and diff run your git)") from None
    if code != 0:
        raise typer.Exit(code)
