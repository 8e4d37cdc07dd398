"""Make a run's base commit reachable on the remote the nodes fetch from, and remove a
run's refs from it again (`flota prune`).

The base is pushed as `refs/flota/base/<run>`, so nodes fetch one known ref and never
need unadvertised-object fetches; the jobs push `flota/<run>/...` branches.
`--from-working-tree` first records the working tree (tracked changes and untracked
files, minus ignored ones) as a commit on top of HEAD, through a private index so the
user's own index is untouched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import git

from coordinator.config import DEFAULT_PUSH_TIMEOUT_S
from coordinator.errors import RepoError
from coordinator.models import Repo

__all__ = ["delete_refs", "list_run_refs", "push_base", "resolve_url", "run_of_ref"]

# Never prompt: git asks no terminal, ssh no askpass program; the push also runs without a
# controlling terminal (its own session) and with stdin closed, so ssh cannot open /dev/tty.
_NEVER_PROMPT = {"GIT_TERMINAL_PROMPT": "0", "SSH_ASKPASS_REQUIRE": "never"}
_ENGLISH = {"LANGUAGE": "C", "LC_ALL": "C"}  # as GitPython runs git: the reasons read in one language
# A command with these is a script (`ssh "$@"`, `a; b`, a comment): nothing may be appended.
_SHELL = re.compile(r"[;&|<>()`#$\n\\]")
_NOISE = ("hint:", "To ", "Warning: Permanently added")  # git's and ssh's chatter, never a reason
_MAX_REASONS = 3
_MAX_WHY = 300


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _summary(stderr: str, status: object) -> str:
    """One line: the last `fatal:`/`error:` line, after the lines just before it that say why
    (ssh's "Host key verification failed.", a server's "Repository not found.")."""
    lines = [ln.strip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(_NOISE)]
    if not lines:
        return f"git exited with {status}"
    verdicts = [i for i, ln in enumerate(lines) if ln.startswith(("fatal:", "error:"))]
    if not verdicts:
        return _clip(lines[-1], _MAX_WHY)
    last = verdicts[-1]
    verdict = _clip(lines[last], _MAX_WHY // 2)
    reasons = [
        _clip(ln.removeprefix("fatal: ").removeprefix("error: ").rstrip("."), _MAX_WHY // 2)
        for ln in lines[max(0, last - _MAX_REASONS) : last]
    ]
    if not reasons:
        return verdict
    return _clip(f"{'; '.join(dict.fromkeys(reasons))} ({verdict})", _MAX_WHY)


def _why(exc: git.GitCommandError) -> str:
    """git's own reason, from GitPython's `stderr: '...'` wrapping of git's error output."""
    text = str(exc.stderr or "")
    wrapped = re.fullmatch(r"\s*stderr: '(.*)'\s*", text, re.DOTALL)
    return _summary(wrapped.group(1) if wrapped else text, exc.status)


def _config(repo: git.Repo, key: str) -> str:
    return str(repo.git.config("--get", key, with_exceptions=False)).strip()


def _push_env(repo: git.Repo) -> dict[str, str]:
    """The coordinator's environment, so git picks the ssh command as it would for the user
    (GIT_SSH_COMMAND, then core.sshCommand, then GIT_SSH, then ssh), plus never-prompt.

    BatchMode=yes is appended only to a command git runs as plain OpenSSH: a wrapper script
    or GIT_SSH's program may not take ssh's options, and the missing terminal keeps them quiet.
    """
    env = {**os.environ, **_ENGLISH, **_NEVER_PROMPT}
    command = os.environ.get("GIT_SSH_COMMAND") or _config(repo, "core.sshCommand")
    if not command and os.environ.get("GIT_SSH"):
        return env
    command = command or "ssh"
    variant = os.environ.get("GIT_SSH_VARIANT") or _config(repo, "ssh.variant")
    try:
        program = os.path.basename(shlex.split(command)[0])
    except (ValueError, IndexError):
        program = ""
    if program in ("ssh", "ssh.exe") and not _SHELL.search(command) and variant in ("", "auto", "ssh"):
        env["GIT_SSH_COMMAND"] = f"{command} -o BatchMode=yes"
    return env


def _git(repo: git.Repo, args: list[str], timeout_s: float, what: str) -> str:
    """Run `git ARGS` talking to a remote (push, ls-remote) in `repo`; its stdout, or
    RepoError("<what>: <git's reason>")."""
    proc = subprocess.Popen(
        [git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args],
        cwd=repo.working_dir,
        env=_push_env(repo),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # no controlling terminal, and one group to kill with its ssh
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it ended just now
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a child that left the group still holds the pipe
            proc.kill()
        raise RepoError(
            f"{what}: no answer within {timeout_s:g} s "
            "(push_timeout_s in coordinator.toml, or flota coordinator start --push-timeout S)"
        ) from None
    if proc.returncode != 0:
        raise RepoError(f"{what}: {_summary(err, proc.returncode)}")
    return out


def _push(repo: git.Repo, url: str, refspec: str, timeout_s: float) -> None:
    _git(repo, ["push", url, refspec], timeout_s, f"cannot push the base to {url}")


def run_of_ref(ref: str) -> str:
    """The run a ref belongs to (`refs/heads/flota/<run>/...`, `refs/flota/<kind>/<run>...`), or ""."""
    parts = ref.split("/")
    if parts[:3] == ["refs", "heads", "flota"] and len(parts) >= 5:
        return parts[3]
    if parts[:2] == ["refs", "flota"] and len(parts) >= 4:
        return parts[3]
    return ""


@contextlib.contextmanager
def _no_repo() -> Iterator[git.Repo]:
    """An empty repository to run git in: prune has no user repository at hand, and `git
    push` needs one. The user's own git and ssh settings (~/.gitconfig, ~/.ssh) still apply."""
    with tempfile.TemporaryDirectory(prefix="flota-prune-") as tmp:
        repo = git.Repo.init(tmp, bare=True)
        try:
            yield repo
        finally:
            repo.close()


def list_run_refs(url: str, timeout_s: float = DEFAULT_PUSH_TIMEOUT_S) -> dict[str, list[str]]:
    """The flota refs on the remote `url`, by run: {run id: [refs]} (RepoError if it cannot be read)."""
    with _no_repo() as repo:
        out = _git(
            repo, ["ls-remote", url, "refs/heads/flota/*", "refs/flota/*"], timeout_s, f"cannot list {url}"
        )
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        ref = line.partition("\t")[2].strip()
        run_id = run_of_ref(ref)
        if run_id and not ref.endswith("^{}"):
            found.setdefault(run_id, []).append(ref)
    return found


def delete_refs(url: str, refs: list[str], timeout_s: float = DEFAULT_PUSH_TIMEOUT_S) -> None:
    """Delete `refs` on the remote `url`, in one push (RepoError if any could not be)."""
    with _no_repo() as repo:
        _git(
            repo,
            ["push", "--no-verify", url, *(f":{ref}" for ref in refs)],
            timeout_s,
            f"cannot delete refs on {url}",
        )


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


def push_base(
    path: str,
    remote: str,
    ref: str,
    from_working_tree: bool,
    run_id: str,
    timeout_s: float = DEFAULT_PUSH_TIMEOUT_S,
) -> Repo:
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
        _push(repo, url, f"{base}:{base_ref}", timeout_s)
        return Repo(url=url, base_ref=base_ref, base_commit=base)
    except git.GitCommandError as exc:  # anything else git refused, e.g. recording the working tree
        raise RepoError(f"git failed in {repo.working_dir}: {_why(exc)}") from exc
    finally:
        repo.close()
