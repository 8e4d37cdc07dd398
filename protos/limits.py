"""The input rules both daemons enforce: ids, names, refs, URLs, text and sizes.

The coordinator's API checks a request with these before it stores anything; the node's
servicer checks a JobSpec with the same ones before it runs anything, and its workspace
once more before git sees a value. One definition, so the three can never disagree.

Every ``valid_*`` function is a predicate; ``show`` quotes a value for an error line.
"""

from __future__ import annotations

import re

__all__ = [
    "BASE_REF_RE",
    "BRANCH_RE",
    "COMMIT_RE",
    "CONTROL_RE",
    "ENV_KEY_RE",
    "ID_RE",
    "LABEL_KEY_RE",
    "LABEL_VALUE_RE",
    "MAX_BUDGET_USD",
    "MAX_COMMAND",
    "MAX_INPUT",
    "MAX_FULL_RUN_JOBS",
    "MAX_JOBS",
    "MAX_MESSAGE_BYTES",
    "MAX_MODEL",
    "MAX_RESUME_BRANCHES",
    "MAX_SECRET_VALUE",
    "MAX_IGNORE_PATHS",
    "MAX_STEPS",
    "MAX_TIMEOUT_S",
    "MAX_URL",
    "MODEL_RE",
    "NAME_RE",
    "NODE_ID_RE",
    "PROFILE_RE",
    "REF_RE",
    "show",
    "valid_api_base",
    "valid_id",
    "valid_ignore_path",
    "valid_input_path",
    "valid_ref",
    "valid_text",
    "valid_url",
]

# \Z, not $: no trailing newline slips in.
NODE_ID_RE = re.compile(r"^[a-z0-9]{8,32}\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")  # node, agent and template names
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}\Z")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9._:/-]{0,63}\Z")
PROFILE_RE = re.compile(r"^[a-z0-9._-]{1,32}\Z")  # a network profile
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
# Run, job and attempt ids as the coordinator makes them (r1a2b3c, r1a2b3c.1, r1a2b3c.1.a2)
# and as nodes accept them: anything else names nothing.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}\Z")  # a litellm model string
BRANCH_RE = re.compile(r"^flota/[A-Za-z0-9._/-]{1,200}\Z")  # a job's result branch
BASE_REF_RE = re.compile(r"^refs/[A-Za-z0-9._/-]{1,200}\Z")
REF_RE = re.compile(r"^[A-Za-z0-9._/-]{1,255}\Z")  # any branch or ref name git is handed
COMMIT_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?\Z")  # a full SHA-1 or SHA-256 id
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# An agent CLI's bookkeeping left out of a job's commit: a relative glob (".aider*",
# ".architect"), never pathspec magic (":..."), an option, an absolute path or "..".
IGNORE_PATH_RE = re.compile(r"^[A-Za-z0-9._*?\[\]-][A-Za-z0-9._*?\[\]/-]{0,199}\Z")
MAX_IGNORE_PATHS = 32

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default, on every channel and server
MAX_COMMAND = 64 * 1024  # a command, prompt or check
MAX_MODEL = 200
# batch: one job's input text (flota run --inputs, or --each without a repo): it travels in
# the run's one SubmitRun request (itself at most MAX_MESSAGE_BYTES) and in each JobSpec.
MAX_INPUT = 64 * 1024
MAX_JOBS = 20_000  # jobs in one run (10,000 inputs x 2 models)
# A run with more jobs than this is sent with its jobs brief (id, name, status, wait reason):
# whole, with their results, they might not fit in one message. BatchResults streams them.
MAX_FULL_RUN_JOBS = 1000
MAX_INPUT_PATH = 1024
MAX_URL = 4096
MAX_RESUME_BRANCHES = 100  # the coordinator sends one per earlier attempt (at most 11)
MAX_DEPENDENCIES = 100  # a task of a graph waits on at most this many (and so merges as many)
MAX_SECRET_VALUE = 65536
MAX_STEPS = 10_000
MAX_BUDGET_USD = 100_000
MAX_TIMEOUT_S = 7 * 86400

# git URLs a node may fetch from; "<helper>::<address>" and unknown "<x>://" schemes
# would run a remote helper (git-remote-<x>), ext:: a shell command.
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_SCHEMES = frozenset({"file", "git", "http", "https", "ssh", "git+ssh", "ssh+git"})


def show(value: str) -> str:
    """A value for an error line: quoted and at most ~200 characters (gRPC clients refuse
    status trailers over 8 KiB: an echoed 100 kB id would reach them as RESOURCE_EXHAUSTED)."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def valid_id(value: str) -> bool:
    """A run, job or attempt id: safe as a file name and in a ref."""
    return bool(ID_RE.match(value)) and ".." not in value


def valid_ignore_path(path: str) -> bool:
    """A path an agent CLI writes for itself (JobSpec.ignore_paths)."""
    return bool(IGNORE_PATH_RE.match(path)) and not path.startswith("-") and ".." not in path.split("/")


def valid_ref(name: str, shape: re.Pattern[str]) -> bool:
    """The shape, and what `git check-ref-format` refuses besides (so a value accepted
    here does not fail later in git)."""
    return (
        bool(shape.match(name))
        and not name.startswith("-")
        and ".." not in name
        and not name.endswith(".")
        and all(part and not part.startswith(".") and not part.endswith(".lock") for part in name.split("/"))
    )


def valid_url(url: str) -> bool:
    """A git remote a node may fetch from and push to: no option, control character,
    remote helper or relative path (git runs inside the mirror, where it would mean
    something else)."""
    if not url or len(url) > MAX_URL or url.startswith("-") or CONTROL_RE.search(url):
        return False
    scheme = _URL_SCHEME.match(url)
    if scheme:
        return scheme.group(1).lower() in _URL_SCHEMES
    head = url.split("/", 1)[0]
    if "::" in head:  # <transport>::<address>: a remote helper
        return False
    if ":" in head:  # scp-like [user@]host:path
        return not head.startswith(":")
    return url.startswith("/")


def valid_text(text: str, limit: int = MAX_COMMAND) -> bool:
    """A command, prompt or check: not blank, at most `limit` characters, no NUL."""
    return bool(text.strip()) and len(text) <= limit and "\0" not in text


def valid_api_base(url: str) -> bool:
    """An OpenAI-style server an agent may call: http(s), one line, no spaces."""
    return (
        url.startswith(("http://", "https://"))
        and len(url) <= 500
        and not any(ch.isspace() or ch == "\0" for ch in url)
    )


def valid_input_path(path: str) -> bool:
    """A job's input file, relative to its worktree or scratch directory: no absolute
    path, no `..`, no empty or dot part, no control character."""
    return (
        0 < len(path) <= MAX_INPUT_PATH
        and not path.startswith(("/", "-"))
        and not CONTROL_RE.search(path)
        and all(part not in ("", ".", "..") for part in path.split("/"))
    )
