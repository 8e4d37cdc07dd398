"""Git workspaces for jobs: one bare mirror per remote URL, one worktree per job.

Layout under the workspace root (all directories mode 0o700)::

    root/mirrors/<sha256(url)[:16]>.git   bare mirror, remote ``origin`` = url
    root/worktrees/<job_key>              a job's worktree on the job's branch
    root/scratch/<job_key>                an empty directory for jobs without a repo

The API is synchronous (the daemon calls it through ``asyncio.to_thread``) and runs
git through ``subprocess`` only, so importing this module stays cheap.

Security: the repository content is untrusted, and so is everything a job's agent can
write, which includes the mirror. Every git command runs through the hardened runner of
:mod:`node_agent.git`. Filter drivers cannot be disabled by a ``-c`` (their names come
from ``.gitattributes``), so the mirror's ``info/attributes``, which outranks every
in-tree one, is rewritten before each checkout and commit to unset ``filter``. Ids,
refs, commits and URLs are checked again with the rules of :mod:`protos.limits`.

Error handling: every failure of a local git step raises
:class:`~node_agent.errors.WorkspaceError` with one readable line (``cannot fetch
refs/flota/base/r1 from /srv/x.git: couldn't find remote ref ...``). A failed push is not
an exception: :meth:`Workspace.commit_and_push` returns ``pushed=False`` and the commit
stays on the mirror's local branch; a job that changed nothing gets neither (``empty``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from node_agent.checks import check_commit, check_job_key, check_ref, check_url
from node_agent.combine import merge_all
from node_agent.errors import WorkspaceError
from node_agent.git import Git, commit_message, parse_author, parse_numstat
from protos.limits import COMMIT_RE, ID_RE, valid_id

__all__ = ["CommitOutcome", "Workspace"]


@dataclass(frozen=True)
class CommitOutcome:
    """What :meth:`Workspace.commit_and_push` produced; ``error`` is set when the push failed.
    ``empty``: the job changed nothing, and nothing was committed or pushed."""

    head_commit: str
    base_commit: str
    files_modified: tuple[str, ...]
    insertions: int
    deletions: int
    pushed: bool
    error: str
    empty: bool = False


# Outranks in-tree .gitattributes, so no filter driver named by the repository can run.
_ATTRIBUTES = "# written by flota: repository content must not pick commands to run\n* !filter\n"

# Checking out a job's worktree is bound by creating files; parallel checkout spreads that
# over processes. scripts/bench_workspace.py on 2 CPUs: warm prepare of 30,000 files
# 1.09-1.14 s -> 0.90 s for ~40% more CPU; neutral at 3,000. Capped: each worker is a process.
_CHECKOUT_WORKERS = max(
    1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
)

_BASE_FILE = "flota-base"
_URL_FILE = "flota-url"

_locks_guard = threading.Lock()
_locks: dict[Path, threading.Lock] = {}


def _mirror_lock(mirror: Path) -> threading.Lock:
    # Jobs of the same repository share one mirror; git's own ref locks make a
    # concurrent fetch fail rather than wait, so we queue them here instead.
    with _locks_guard:
        return _locks.setdefault(mirror, threading.Lock())


class Workspace:
    """Mirrors, worktrees and scratch directories under one root.

    Public API:

    - ``prepare(url, base_ref, base_commit, branch, job_key) -> Path``: worktree on ``branch``
      at ``base_commit``.
    - ``commit_and_push(worktree, branch, message, trailers, author=...) -> CommitOutcome``.
    - ``scratch(job_key) -> Path``: a fresh empty directory for a job without a repository.
    - ``remove(job_key) -> bool``, ``remove_worktrees(prefix, keep=()) -> int`` and
      ``remove_run(run_id, keep=()) -> int``: delete jobs' worktrees and scratch
      directories. Branches stay, in the mirror and on the remote: a job's result is its
      branch. Only ``remove_run_refs(run_id) -> int`` (``flota prune``) deletes a run's
      refs from the mirrors; the remote's are the coordinator's to delete.
    """

    def __init__(
        self,
        root: Path,
        *,
        environ: Mapping[str, str] | None = None,
        timeout_s: float = 600.0,
        allow_remotes: Sequence[str] = (),
    ) -> None:
        self.root = Path(root).resolve()
        # Glob patterns (fnmatch) a repository URL must match when any are set.
        self.allow_remotes = tuple(allow_remotes)
        self.mirrors = self.root / "mirrors"
        self.worktrees = self.root / "worktrees"
        self.scratch_root = self.root / "scratch"
        self.git = Git(environ, timeout_s)
        for directory in (self.root, self.mirrors, self.worktrees, self.scratch_root):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        # A mirror is built under a temporary name and renamed into place; leftovers
        # are from a crash in the middle of that.
        for leftover in self.mirrors.glob("*.git.tmp-*"):
            _rmtree(leftover)

    def mirror_path(self, url: str) -> Path:
        """Where the bare mirror of ``url`` lives."""
        return self.mirrors / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.git"

    def worktree_path(self, job_key: str) -> Path:
        """Where the worktree of ``job_key`` lives; raises on a key that could escape the root."""
        return self.worktrees / check_job_key(job_key)

    def prepare(  # noqa: PLR0913
        self,
        url: str,
        base_ref: str,
        base_commit: str,
        branch: str,
        job_key: str,
        start: str = "",
        merges: Sequence[tuple[str, str]] = (),
    ) -> Path:
        """Make a worktree for ``job_key`` on a new ``branch`` at ``base_commit`` and return it.

        With ``start`` (a commit from :meth:`find_resume`), the worktree starts there
        instead; diffs are still taken from ``base_commit``.

        Fetches ``base_ref`` (or, when it is empty, ``base_commit`` itself) into the
        mirror of ``url`` unless the commit is already there. An existing local
        ``branch`` (an earlier attempt) is reset; its old tip stays in the mirror's
        reflog. A worktree left for the same ``job_key`` is an error: call
        :meth:`remove` first, so that uncommitted work is never dropped silently. ``merges``
        (a job of a graph): (ref, commit) pairs fetched like the base, merged in after.
        """
        self._check_url(url)
        for ref, commit in [(base_ref, base_commit), *merges]:
            if ref:
                check_ref(ref, "base ref")
                if not ref.startswith("refs/"):
                    raise WorkspaceError(f"invalid base ref {ref!r}: must start with refs/")
            check_commit(commit)
        check_ref(branch, "branch")
        path = self.worktree_path(job_key)
        mirror = self.mirror_path(url)
        with _mirror_lock(mirror):
            if not mirror.is_dir():
                self._create_mirror(mirror, url)
            _write_attributes(mirror)
            for ref, commit in [(base_ref, base_commit), *merges]:
                if not self._has_commit(mirror, commit):
                    self._fetch(mirror, url, ref, commit)
                    if not self._has_commit(mirror, commit):
                        raise WorkspaceError(f"commit {commit} is not in {ref or 'the remote'} of {url}")
            if path.exists() or path.is_symlink():
                raise WorkspaceError(f"a worktree for job {job_key} already exists; remove it first")
            self.git.output(
                [
                    "-c",
                    f"checkout.workers={_CHECKOUT_WORKERS}",
                    "--git-dir",
                    str(mirror),
                    "worktree",
                    "add",
                    "--quiet",
                    "-B",
                    branch,
                    str(path),
                    start or base_commit,
                ],
                cwd=self.worktrees,
                what=f"cannot create worktree for job {job_key} on branch {branch}",
            )
            _, admin = self._locate(path)
            if merges:
                env = {"GIT_DIR": str(admin), "GIT_COMMON_DIR": str(mirror), "GIT_WORK_TREE": str(path)}
                base_commit = merge_all(self.git, path, env, merges)
            (admin / _BASE_FILE).write_text(base_commit + "\n")
        return path

    def find_resume(self, url: str, base_commit: str, branches: Sequence[str]) -> tuple[str, str] | None:
        """The first of ``branches`` on the remote that builds on ``base_commit``, as
        (branch, commit): where an earlier attempt left its work in progress. Branches
        that do not exist or do not descend from the base are skipped."""
        self._check_url(url)
        check_commit(base_commit)
        mirror = self.mirror_path(url)
        with _mirror_lock(mirror):
            if not mirror.is_dir():
                self._create_mirror(mirror, url)
            for branch in branches:
                check_ref(branch, "branch")
                dest = f"refs/flota/resume/{branch}"
                try:
                    self._fetch(mirror, url, f"refs/heads/{branch}", base_commit, dest=dest)
                except WorkspaceError:
                    continue  # not pushed (yet): try the next
                tip = self.git.run(
                    ["--git-dir", str(mirror), "rev-parse", "--verify", f"{dest}^{{commit}}"], cwd=mirror
                )
                commit = tip.stdout.decode().strip() if tip.returncode == 0 else ""
                if not COMMIT_RE.match(commit):
                    continue
                ancestor = self.git.run(
                    ["--git-dir", str(mirror), "merge-base", "--is-ancestor", base_commit, commit], cwd=mirror
                )
                if ancestor.returncode == 0:
                    return branch, commit
        return None

    def _check_url(self, url: str) -> None:
        check_url(url)
        if not self.allow_remotes:
            return
        # A glob's * also matches "/": without this, /allowed/* would admit /allowed/../x.
        if any(part == ".." for part in re.split(r"[/\\:]", url)):
            raise WorkspaceError(f"remote {url} is not on this node's allow-list (it contains '..')")
        if not any(fnmatch.fnmatchcase(url, p) for p in self.allow_remotes):
            raise WorkspaceError(
                f"remote {url} is not on this node's allow-list ({', '.join(self.allow_remotes)})"
            )

    def _create_mirror(self, mirror: Path, url: str) -> None:
        tmp = mirror.with_name(f"{mirror.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        _rmtree(tmp)
        what = f"cannot create mirror for {url}"
        self.git.output(["init", "--bare", "--quiet", "--template=", str(tmp)], cwd=self.mirrors, what=what)
        git_dir = ["--git-dir", str(tmp)]
        # Reflogs keep the old tip when a retry resets a branch: nothing is lost.
        self.git.output([*git_dir, "config", "core.logAllRefUpdates", "true"], cwd=self.mirrors, what=what)
        self.git.output([*git_dir, "remote", "add", "--", "origin", url], cwd=self.mirrors, what=what)
        (tmp / _URL_FILE).write_text(url + "\n")
        os.chmod(tmp, 0o700)
        os.rename(tmp, mirror)

    def _fetch(self, mirror: Path, url: str, base_ref: str, base_commit: str, dest: str = "") -> None:
        if base_ref:
            # Fetched refs live under refs/flota/ so that a base ref named refs/heads/x can
            # never overwrite a job branch x (with its unpushed commits) in the mirror.
            if not dest:
                dest = (
                    base_ref if base_ref.startswith("refs/flota/") else f"refs/flota/fetched/{base_ref[5:]}"
                )
            refspec = f"+{base_ref}:{dest}"
        else:
            refspec = base_commit
        self.git.fetch(mirror, url, refspec, what=f"cannot fetch {base_ref or base_commit} from {url}")

    def _has_commit(self, mirror: Path, commit: str) -> bool:
        proc = self.git.run(["--git-dir", str(mirror), "cat-file", "-e", f"{commit}^{{commit}}"], cwd=mirror)
        return proc.returncode == 0

    # ----- commit and push ---------------------------------------------------------

    def commit_and_push(
        self,
        worktree: Path,
        branch: str,
        message: str,
        trailers: Mapping[str, str],
        author: str = "flota <flota@localhost>",
        allow_empty: bool = False,
        ignore: Sequence[str] = (),
    ) -> CommitOutcome:
        """Commit everything in ``worktree`` and push it to ``refs/heads/<branch>``; when its
        files are the base's (the job changed nothing, whatever it committed itself), nothing
        is committed or pushed (``empty``) unless ``allow_empty``: then an empty commit is.

        ``ignore``: globs of an agent CLI's own files (".architect", ".aider*"), with what
        is under them: files there that the base does not track are left out of the commit
        (a file the base tracks is the user's, and its change is committed).
        ``trailers`` become ``Key: value`` lines in the message's last paragraph. The diff
        stat is taken from the base commit recorded by :meth:`prepare` to the new head.
        Local failures raise :class:`WorkspaceError`; a failed push is reported in the
        outcome (``pushed=False``, ``error``) and the commit stays on the local branch.
        """
        worktree = Path(worktree)
        if worktree.parent != self.worktrees:
            raise WorkspaceError(f"{worktree} is not a worktree of {self.root}")
        check_job_key(worktree.name)
        check_ref(branch, "branch")
        text = commit_message(message, trailers)
        name, email = parse_author(author)
        mirror, admin = self._locate(worktree)
        base = _read_line(admin / _BASE_FILE)
        url = _read_line(mirror / _URL_FILE)
        if not COMMIT_RE.match(base) or self.mirror_path(url) != mirror:
            raise WorkspaceError(f"the mirror of worktree {worktree.name} was altered; not committing")
        self._check_url(url)
        # Explicit GIT_DIR/GIT_COMMON_DIR: the worktree's .git file and the admin dir's
        # commondir are writable by the job and must not choose the repository.
        env = {
            "GIT_DIR": str(admin),
            "GIT_COMMON_DIR": str(mirror),
            "GIT_WORK_TREE": str(worktree),
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }
        what = f"cannot commit job {worktree.name}"
        with _mirror_lock(mirror):
            _write_attributes(mirror)
            self.git.output(["add", "--all"], cwd=worktree, env=env, what=what)
            if ignore:
                self._unstage_new(worktree, base, ignore, env, what)
            tree = self.git.output(["write-tree"], cwd=worktree, env=env, what=what).strip()
            start = self.git.output(["rev-parse", f"{base}^{{tree}}"], cwd=worktree, env=env, what=what)
            if tree == start.strip() and not allow_empty:  # the job changed nothing
                return CommitOutcome("", base, (), 0, 0, pushed=False, error="", empty=True)
            self.git.output(
                [
                    "commit",
                    "--quiet",
                    "--allow-empty",
                    "--no-verify",
                    "--no-gpg-sign",
                    "--cleanup=whitespace",
                    "-F",
                    "-",
                ],
                cwd=worktree,
                env=env,
                input=text,
                what=what,
            )
            head = self.git.output(
                ["rev-parse", "--verify", "HEAD^{commit}"], cwd=worktree, env=env, what=what
            ).strip()
            numstat = self.git.output(
                ["diff-tree", "-r", "-z", "--numstat", "--no-renames", base, head],
                cwd=worktree,
                env=env,
                what=f"cannot diff job {worktree.name}",
            )
        files, insertions, deletions = parse_numstat(numstat)
        error = ""
        try:
            self.git.push(mirror, url, head, branch, env)
        except WorkspaceError as exc:
            error = str(exc)
        return CommitOutcome(
            head_commit=head,
            base_commit=base,
            files_modified=files,
            insertions=insertions,
            deletions=deletions,
            pushed=not error,
            error=error,
        )

    def _unstage_new(
        self, worktree: Path, base: str, ignore: Sequence[str], env: Mapping[str, str], what: str
    ) -> None:
        specs = [spec for path in ignore for spec in (f":(glob){path}", f":(glob){path}/**")]
        added = self.git.output(
            ["diff", "--cached", "--name-only", "-z", "--no-renames", "--diff-filter=A", base, "--", *specs],
            cwd=worktree,
            env=env,
            what=what,
        )
        names = [name for name in added.split("\0") if name]
        if names:
            self.git.output(
                # literal: a file named "*" must not unstage the user's files beside it
                [
                    "--literal-pathspecs",
                    "rm",
                    "--cached",
                    "--quiet",
                    "--pathspec-from-file=-",
                    "--pathspec-file-nul",
                ],
                cwd=worktree,
                env=env,
                input="\0".join(names),
                what=what,
            )

    # ----- scratch and removal -----------------------------------------------------

    def scratch_path(self, job_key: str) -> Path:
        return self.scratch_root / check_job_key(job_key)

    def new_scratch(self, job_key: str) -> Path | None:
        """The directory for ``job_key`` if it did not exist yet: one mkdir, cheap enough for
        the event loop. None if it exists (a restart's leftover): :meth:`scratch` empties it."""
        path = self.scratch_root / check_job_key(job_key)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            return None
        return path

    def scratch(self, job_key: str) -> Path:
        """Return a fresh, empty directory for ``job_key`` (emptied if it existed)."""
        path = self.scratch_root / check_job_key(job_key)
        _rmtree(path)
        path.mkdir(mode=0o700)
        return path

    def remove(self, job_key: str) -> bool:
        """Delete the worktree and scratch directory of ``job_key``; True if anything was there.

        The job's branch stays in the mirror and on the remote.
        """
        path = self.worktree_path(job_key)
        removed = False
        if path.exists() or path.is_symlink():
            removed = True
            try:
                mirror: Path | None = self._locate(path)[0]
            except WorkspaceError:
                mirror = None
            if mirror is not None:
                with _mirror_lock(mirror), contextlib.suppress(WorkspaceError):
                    self.git.output(
                        ["--git-dir", str(mirror), "worktree", "remove", "--force", "--force", str(path)],
                        cwd=self.worktrees,
                        what=f"cannot remove worktree {job_key}",
                    )
            _rmtree(path)
            for repo in [mirror] if mirror is not None else sorted(self.mirrors.glob("*.git")):
                with _mirror_lock(repo), contextlib.suppress(WorkspaceError):
                    self.git.output(
                        ["--git-dir", str(repo), "worktree", "prune"], cwd=repo, what="cannot prune worktrees"
                    )
        scratch = self.scratch_root / job_key
        if scratch.exists() or scratch.is_symlink():
            removed = True
            _rmtree(scratch)
        return removed

    def remove_worktrees(self, prefix: str, keep: Collection[str] = ()) -> int:
        """Remove every job whose key starts with ``prefix``, except those in ``keep``; return how many."""
        if not ID_RE.match(prefix):  # the shape of an id: "<run id>." is one
            raise WorkspaceError(f"invalid job key prefix {prefix!r}")
        keys = {
            entry.name
            for parent in (self.worktrees, self.scratch_root)
            for entry in parent.iterdir()
            if entry.name.startswith(prefix) and valid_id(entry.name) and entry.name not in keep
        }
        return sum(self.remove(key) for key in sorted(keys))

    def remove_run(self, run_id: str, keep: Collection[str] = ()) -> int:
        """Remove the jobs of run ``run_id`` (keys ``<run_id>.<job>...``), except those in ``keep``."""
        return self.remove_worktrees(f"{run_id}.", keep)

    def remove_run_refs(self, run_id: str) -> int:
        """Delete a run's branches, base and resume refs from every mirror (prune); how many."""
        if not valid_id(run_id) or "." in run_id:  # one whole ref component
            raise WorkspaceError(f"invalid run id {run_id!r}")
        prefixes = [f"refs/{kind}/{run_id}" for kind in ("heads/flota", "flota/base", "flota/resume/flota")]
        removed = 0
        for mirror in sorted(self.mirrors.glob("*.git")):
            with _mirror_lock(mirror):
                removed += self.git.delete_refs(mirror, prefixes, what=f"cannot delete the refs of {run_id}")
        return removed

    # ----- git ---------------------------------------------------------------------

    def _locate(self, worktree: Path) -> tuple[Path, Path]:
        """Find (mirror, admin dir) of a worktree from the mirror side, not from its .git file."""
        target = str(worktree / ".git")
        for mirror in self.mirrors.glob("*.git"):
            admins = mirror / "worktrees"
            candidates = [admins / worktree.name, *sorted(admins.glob(f"{worktree.name}*"))]
            for admin in candidates:
                with contextlib.suppress(OSError):
                    if _read_line(admin / "gitdir") == target:
                        return mirror, admin
        raise WorkspaceError(f"{worktree} is not a worktree of {self.root}")


# ----- helpers ---------------------------------------------------------------------


def _write_attributes(mirror: Path) -> None:
    path = mirror / "info" / "attributes"
    with contextlib.suppress(OSError):
        if path.read_text() == _ATTRIBUTES:
            return
    path.parent.mkdir(mode=0o700, exist_ok=True)
    if path.is_symlink() or path.is_dir():
        _rmtree(path)
    tmp = path.with_name("attributes.tmp")
    tmp.write_text(_ATTRIBUTES)
    os.replace(tmp, path)


def _read_line(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _rmtree(path: Path) -> None:
    """Remove a file, symlink or tree, including directories a job made read-only."""

    def retry(func: Callable[..., object], name: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            for directory in (os.path.dirname(name), name):
                if os.path.isdir(directory) and not os.path.islink(directory):
                    os.chmod(directory, os.stat(directory).st_mode | stat.S_IRWXU)
            func(name)

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=retry)
