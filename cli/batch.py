"""`flota run TEMPLATE --each GLOB | --inputs FILE|-`: one job per input.

An input is a path (`--each`: files in the repository at the run's base, or, without
`--repo`, files here whose text travels with the job), a line of a file or of stdin, or
a JSON object (a `.jsonl` file, or `--jsonl`). The task is a template: `{input}` is the
path, the line, or the object's JSON; `{field}` (JSON lines) is that field of the object.
For a shell task each value is shell-quoted; for a prompt it goes in as it is. `${VAR}`
is the shell's and is left alone.

Every input is read and checked before anything is submitted: a bad glob, no match, no
inputs, a missing field or an input over the size cap is one line (CliError) and no run.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cli.agents import Template, fan_out
from cli.client import CliError
from protos.flota.v1 import coordinator_pb2
from protos.limits import CONTROL_RE, MAX_COMMAND, MAX_INPUT, MAX_JOBS, MAX_MESSAGE_BYTES, valid_input_path

__all__ = [
    "Input",
    "batch_inputs",
    "batch_tasks",
    "check_size",
    "each_inputs",
    "fill",
    "glob_regex",
    "read_inputs",
]

# A placeholder: {name}, not ${name} (the shell's own).
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
# What one run's request may hold besides its tasks (placement, env, ...): kept free.
_REQUEST_SLACK = 64 * 1024


@dataclass(frozen=True)
class Input:
    """One input: where it came from (for errors), what `{input}` becomes, the text that
    travels with the job ($FLOTA_INPUT), its path (--each) and its fields (JSON lines)."""

    where: str
    value: str
    text: str = ""
    path: str = ""
    fields: Mapping[str, str] | None = None  # None: not a JSON object


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob for repository paths: `*` and `?` within a path part, `**/` any number of
    directories, `[abc]` / `[!abc]` classes. CliError for a pattern that cannot match
    a path in the repository (absolute, `..`, an unclosed class)."""
    if not pattern.strip():
        raise CliError("--each needs a glob (e.g. 'docs/**/*.md')")
    if pattern.startswith("/") or ".." in pattern.split("/"):
        raise CliError(f"invalid glob {pattern!r}: paths are relative to the repository, without ..")
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise CliError(f"invalid glob {pattern!r}: a [ without its ]")
            body = pattern[i + 1 : end]
            negate = body[:1] in ("!", "^")
            inner = re.escape(body[1:] if negate else body).replace(r"\-", "-")
            out.append(f"[{'^' if negate else ''}{inner}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _git_paths(repo: Path, ref: str, working_tree: bool) -> list[str]:
    """The files a run based on `ref` (or on the working tree) will have in its worktree."""
    # From the repository's top, whichever of its directories `repo` is: a job's worktree is all of it.
    args = ["ls-files", "-z", "--full-name", "--cached", "--others", "--exclude-standard", "--", ":/"]
    if not working_tree:
        args = ["ls-tree", "-r", "-z", "--full-tree", "--name-only", "--end-of-options", ref]
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CliError(f"cannot list the files of {repo}: {exc}") from exc
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        raise CliError(f"cannot list the files of {repo} at {ref}: {why[-1] if why else 'git failed'}")
    return [p for p in done.stdout.decode(errors="surrogateescape").split("\0") if p]


def each_inputs(pattern: str, repo: Path | None, ref: str, working_tree: bool) -> list[Input]:
    """The files `pattern` matches, sorted: in the repository at `ref` (each job finds its
    file in its worktree), or without a repo here, each file's text travelling with its job."""
    regex = glob_regex(pattern)
    if repo is not None:
        paths = sorted(p for p in _git_paths(repo, ref, working_tree) if regex.fullmatch(p))
        where = f"in the repository at {ref}" if not working_tree else "in the working tree"
        if not paths:
            raise CliError(f"no file matches {pattern!r} {where}; nothing was submitted")
        return [_path_input(p, "") for p in paths]
    found = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not found:
        raise CliError(f"no file matches {pattern!r} here (without --repo, --each reads local files)")
    inputs = []
    for name in found:
        data = Path(name).read_bytes()
        if len(data) > MAX_INPUT:
            raise CliError(
                f"{name} is {len(data)} bytes; an input travels with its job up to {MAX_INPUT} bytes "
                "(commit larger files and use --each with --repo); nothing was submitted"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CliError(f"{name} is not UTF-8 text; nothing was submitted") from None
        if "\0" in text:
            raise CliError(f"{name} has a NUL byte; nothing was submitted")
        inputs.append(_path_input(name, text))
    return inputs


def _path_input(path: str, text: str) -> Input:
    if not valid_input_path(path) or "\\" in path:
        raise CliError(f"cannot use the path {path!r} as an input (a plain relative path)")
    return Input(where=path, value=path, text=text, path=path)


def read_inputs(source: str, jsonl: bool) -> list[Input]:
    """One input per non-blank line of `source` (a file, or `-` for stdin); with `jsonl`
    (or a `.jsonl` file) each line a JSON object."""
    jsonl = jsonl or source.endswith(".jsonl")
    name = "stdin" if source == "-" else source
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise CliError(f"{name} is not UTF-8 text; nothing was submitted") from None
    inputs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue  # blank lines separate, they are no input
        where = f"line {number} of {name}"
        if len(line.encode()) > MAX_INPUT:
            raise CliError(
                f"{where} is over {MAX_INPUT} bytes, the most an input may be; nothing was submitted"
            )
        if "\0" in line:
            raise CliError(f"{where} has a NUL byte; nothing was submitted")
        fields = _object(line, where) if jsonl else None
        inputs.append(Input(where=where, value=line, text=line, fields=fields))
    if not inputs:
        raise CliError(f"{name} has no inputs (one per line{', each a JSON object' if jsonl else ''})")
    return inputs


def _object(line: str, where: str) -> dict[str, str]:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise CliError(f"{where} is not JSON ({exc}); nothing was submitted") from None
    if not isinstance(data, dict):
        raise CliError(f"{where} is not a JSON object; nothing was submitted")
    return {str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in data.items()}


def fill(template: str, item: Input, shell: bool) -> str:
    """`template` with `{input}` and (JSON lines) `{field}` replaced, each value shell-quoted
    for a shell task. A `{name}` a JSON object does not have is a CliError; for other
    inputs only `{input}` is a placeholder."""

    def value(found: re.Match[str]) -> str:
        key = found.group(1)
        if key == "input":
            text = item.value
        elif item.fields is not None:
            if key not in item.fields:
                raise CliError(
                    f"{item.where} has no field {key!r} (the task uses {{{key}}}); nothing was submitted"
                )
            text = item.fields[key]
        else:
            return found.group(0)
        return shlex.quote(text) if shell else text

    return _PLACEHOLDER.sub(value, template)


def _label(item: Input) -> str:
    return CONTROL_RE.sub(" ", item.path or item.value)[:60]


def batch_inputs(
    texts: Sequence[str],
    workers: int,
    each: str | None,
    inputs: str | None,
    jsonl: bool,
    repo: str | None,
    ref: str,
    working_tree: bool,
) -> list[Input]:
    """`flota run`'s --each / --inputs: one task template, its inputs read and checked."""
    if each is not None and inputs is not None:
        raise CliError("give --each or --inputs, not both")
    if len(texts) != 1:
        raise CliError(f"--each and --inputs take one task template, not {len(texts)}")
    if workers:
        raise CliError("--workers does not go with --each or --inputs: each input is one job")
    if jsonl and inputs is None:
        raise CliError("--jsonl reads --inputs as JSON lines; give --inputs FILE (or -)")
    if each is None:
        return read_inputs(inputs or "-", jsonl)
    where = Path(repo).resolve() if repo else None
    if where is not None and not where.is_dir():
        raise CliError(f"no such directory: {repo}")
    return each_inputs(each, where, ref, working_tree)


def batch_tasks(
    agent: str,
    template: str,
    inputs: Sequence[Input],
    models: Sequence[str],
    templates: Mapping[str, Template],
    api_base: str = "",
    max_steps: int = 0,
) -> list[coordinator_pb2.TaskSpec]:
    """Each input with each model, input by input: the run's tasks, filled and checked."""
    if len(inputs) * max(len(models), 1) > MAX_JOBS:
        raise CliError(
            f"{len(inputs)} inputs x {max(len(models), 1)} models is more than the {MAX_JOBS} jobs "
            "a run may have; split the inputs over several runs"
        )
    out: list[coordinator_pb2.TaskSpec] = []
    for item in inputs:
        text = fill(template, item, agent == "shell")
        if len(text.encode()) > MAX_COMMAND:
            raise CliError(
                f"{item.where} makes a task of {len(text.encode())} bytes; a command or prompt is at most "
                f"{MAX_COMMAND} (use $FLOTA_INPUT, the input's file, instead of {{input}})"
            )
        for task in fan_out(agent, [text], models, 0, templates, api_base, max_steps):
            task.input, task.input_path = item.text, item.path
            task.name = f"{_label(item)} [{task.model}]" if task.model else _label(item)
            out.append(task)
    return out


def check_size(request: coordinator_pb2.SubmitRunRequest, count: int) -> None:
    """One run is one request: it must fit in a gRPC message."""
    size = request.ByteSize()
    if size > MAX_MESSAGE_BYTES - _REQUEST_SLACK:
        raise CliError(
            f"the {count} inputs make a request of {size / 1e6:.1f} MB; a run's request is at most "
            f"{(MAX_MESSAGE_BYTES - _REQUEST_SLACK) / 1e6:.1f} MB (split the inputs over several runs, or "
            "commit the files and use --each with --repo); nothing was submitted"
        )
