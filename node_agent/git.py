"""The hardened git runner: every git command a node runs on a job's behalf goes through here.

The repository content is untrusted, and so is everything a job's agent can write, which
includes the mirror (the agent runs as the same user). So every invocation runs with
system and global config disabled, a protocol allow-list, a clean ``GIT_*`` environment,
``LC_ALL=C`` and ``-c`` overrides for each setting that names a command (hooks, fsmonitor,
credential and askpass helpers, ssh command, alternate-refs command, gpg signing), in a
session of its own that is killed whole on timeout. What the overrides cannot reach
(filter drivers named by ``.gitattributes``) is handled by the workspace
(:mod:`node_agent.workspace`), which rewrites the mirror's ``info/attributes``.

Error handling: :meth:`Git.output` raises :class:`~node_agent.errors.WorkspaceError`
with ``"<what>: <git's reason>"``, the reason being the one stderr line that says why
(:func:`summarise`); :meth:`Git.run` returns the completed process for callers that
read the status themselves.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from node_agent.errors import WorkspaceError

__all__ = ["Git", "commit_message", "is_local_url", "parse_author", "parse_numstat", "summarise"]

# Settings that make git run a command, pinned for every invocation. Command-line
# config outranks the (possibly tampered) repository config for single-valued keys,
# and an empty credential.helper resets the helper list.
_CONFIG_OVERRIDES: tuple[str, ...] = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.askPass=",
    "credential.helper=",
    # BatchMode: a daemon has nobody to answer a passphrase or host-key prompt.
    "core.sshCommand=ssh -o BatchMode=yes",
    "core.alternateRefsCommand=",
    "protocol.ext.allow=never",
    "commit.gpgSign=false",
    "push.gpgSign=false",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    "push.recurseSubmodules=no",
    "push.followTags=false",
    # The node user's global ignore/attributes files must not change what a job commits.
    "core.excludesFile=/dev/null",
    "core.attributesFile=/dev/null",
)

_GIT_ENV: dict[str, str] = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_ATTR_NOSYSTEM": "1",
    # Empty (not unset) values stop git from falling back to core.askPass / SSH_ASKPASS
    # and to core.gitProxy from the repository config.
    "GIT_ASKPASS": "",
    "GIT_PROXY_COMMAND": "",
    # Overrides every protocol.*.allow; keeps ext:: and remote helpers (remote.*.vcs) out.
    "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
    "GIT_NO_REPLACE_OBJECTS": "1",
    # Error lines are shown to users and matched by nobody; C keeps them stable.
    "LC_ALL": "C",
    # An identity for what git records besides commits (the reflog of `worktree add -B`):
    # without one git makes its default, user@<the host's FQDN>, and looks that name up in
    # DNS; where the name server drops packets (a NAT'd laptop offline), each such command
    # waits 10-20 s. The commit step sets the job's author over these.
    "GIT_AUTHOR_NAME": "flota",
    "GIT_AUTHOR_EMAIL": "flota@localhost",
    "GIT_COMMITTER_NAME": "flota",
    "GIT_COMMITTER_EMAIL": "flota@localhost",
}

# The operator may choose how ssh runs (keys, jump hosts); any other GIT_* variable in
# the daemon's environment (GIT_DIR, GIT_WORK_TREE, ...) would redirect our commands.
_PASSTHROUGH_GIT_VARS = frozenset({"GIT_SSH_COMMAND"})

_MAX_ERROR_CHARS = 300
_TRAILER_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_AUTHOR_RE = re.compile(r"\s*([^<>\n]+?)\s*<([^<>\s]+)>\s*")
_SCP_LIKE_RE = re.compile(r"[^/]*:")


class Git:
    """Runs git with the pinned settings and a scrubbed copy of ``environ``."""

    def __init__(self, environ: Mapping[str, str] | None = None, timeout_s: float = 600.0) -> None:
        self.timeout_s = timeout_s
        source = os.environ if environ is None else environ
        env = {k: v for k, v in source.items() if not k.startswith("GIT_") or k in _PASSTHROUGH_GIT_VARS}
        env.update(_GIT_ENV)
        self._env = env

    def run(
        self,
        args: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = {**self._env, **env} if env else self._env
        command = ["git"]
        for setting in _CONFIG_OVERRIDES:
            command += ["-c", setting]
        command += args
        try:
            # A new session: no controlling terminal for ssh to prompt on, and a
            # process group we can kill whole (git, ssh, upload-pack) on timeout.
            proc = subprocess.Popen(
                command,
                cwd=cwd,
                env=full_env,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise WorkspaceError(f"cannot run git: {exc.strerror or exc}") from exc
        try:
            out, err = proc.communicate(None if input is None else input.encode(), timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"fatal: git {args[0] if args else ''} timed out after {self.timeout_s:g} s".encode()
            return subprocess.CompletedProcess(command, -signal.SIGKILL, out, err)
        return subprocess.CompletedProcess(command, proc.returncode, out, err)

    def output(
        self,
        args: Sequence[str],
        cwd: Path,
        *,
        what: str,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> str:
        """Run git; return stdout, or raise ``WorkspaceError("<what>: <git's reason>")``."""
        proc = self.run(args, cwd, env, input)
        if proc.returncode != 0:
            raise WorkspaceError(f"{what}: {summarise(proc.stderr, proc.returncode)}")
        return proc.stdout.decode("utf-8", errors="replace")

    def fetch(self, mirror: Path, url: str, refspec: str, *, what: str) -> None:
        """Fetch ``refspec`` from ``url`` into the bare ``mirror``; raises WorkspaceError."""
        # The plain upload-pack: a remote's config must not pick what runs over there.
        self.output(
            [
                "--git-dir",
                str(mirror),
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-auto-maintenance",
                "--upload-pack=git-upload-pack",
                "--",
                url,
                refspec,
            ],
            cwd=mirror,
            what=what,
        )

    def delete_refs(self, mirror: Path, prefixes: Sequence[str], *, what: str) -> int:
        """Delete the refs of the bare ``mirror`` under ``prefixes`` (each matched up to a
        ``/``, as for-each-ref does), their reflogs with them; return how many."""
        git_dir = ["--git-dir", str(mirror)]
        listed = self.output(
            [*git_dir, "for-each-ref", "--format=%(refname)", *prefixes], cwd=mirror, what=what
        )
        refs = listed.split()
        if refs:
            commands = "".join(f"delete {ref}\n" for ref in refs)
            self.output([*git_dir, "update-ref", "--stdin"], cwd=mirror, what=what, input=commands)
        return len(refs)

    def push(self, mirror: Path, url: str, head: str, branch: str, env: Mapping[str, str]) -> None:
        """Push ``head`` to ``refs/heads/<branch>`` of ``url``; raises WorkspaceError."""
        # A local remote runs receive-pack, and so its hooks, as us: disable them there.
        # Over ssh the server's command must stay the plain default.
        receive_pack = (
            "git -c core.hooksPath=/dev/null -c core.fsmonitor=false receive-pack"
            if is_local_url(url)
            else "git-receive-pack"
        )
        # Pushing the commit id (not HEAD or the branch) pushes exactly what was diffed,
        # and pushing to the URL keeps remote.origin.{pushurl,mirror,push} out of play.
        # No force: a result branch on the remote is never rewritten.
        self.output(
            [
                "push",
                "--quiet",
                "--no-verify",
                f"--receive-pack={receive_pack}",
                "--",
                url,
                f"{head}:refs/heads/{branch}",
            ],
            cwd=mirror,
            env={"GIT_DIR": str(mirror)},
            what=f"cannot push {branch} to {url}",
        )


def summarise(stderr: bytes, returncode: int) -> str:
    """The one stderr line that says why: a push rejection, else git's first fatal/error line."""
    lines = [line.strip() for line in stderr.decode("utf-8", errors="replace").splitlines() if line.strip()]
    chosen = next((line for line in lines if line.startswith("! [")), None)
    if chosen is None:
        chosen = next((line for line in lines if line.startswith(("fatal:", "error:"))), None)
    if chosen is None:
        chosen = lines[-1] if lines else f"git exited with code {returncode}"
    for prefix in ("fatal: ", "error: "):
        chosen = chosen.removeprefix(prefix)
    return chosen[:_MAX_ERROR_CHARS]


def is_local_url(url: str) -> bool:
    """A path or file:// URL: git runs the remote side (and its hooks) as us."""
    if url.startswith("file://"):
        return True
    return "://" not in url and not _SCP_LIKE_RE.match(url)


def commit_message(message: str, trailers: Mapping[str, str]) -> str:
    """``message`` with ``Key: value`` trailers as its last paragraph."""
    lines = []
    for key, value in trailers.items():
        if not _TRAILER_KEY_RE.fullmatch(key) or any(ch in value for ch in "\0\n\r"):
            raise WorkspaceError(f"invalid trailer {key!r}: {value!r}")
        lines.append(f"{key}: {value}")
    body = message.strip() or "flota job result"
    return body + ("\n\n" + "\n".join(lines) if lines else "") + "\n"


def parse_author(author: str) -> tuple[str, str]:
    """(name, email) of ``"Name <email>"``."""
    match = _AUTHOR_RE.fullmatch(author)
    if match is None:
        raise WorkspaceError(f"invalid author {author!r}: expected 'Name <email>'")
    return match.group(1), match.group(2)


def parse_numstat(output: str) -> tuple[tuple[str, ...], int, int]:
    """(files, insertions, deletions) of ``git diff-tree -z --numstat``."""
    files: list[str] = []
    insertions = deletions = 0
    for record in output.split("\0"):
        if not record:
            continue
        added, deleted, path = record.split("\t", 2)
        files.append(path)
        # Binary files show "-": listed, but they add no lines.
        insertions += int(added) if added.isdigit() else 0
        deletions += int(deleted) if deleted.isdigit() else 0
    return tuple(files), insertions, deletions
