"""How a job's command line is started: directly when it is plain words, else by bash.

A command with no shell syntax at all (``python3 score.py --n 5``, ``pytest -q tests``)
is executed directly, saving a shell's start (about 1 ms of CPU a job). The rule is
conservative: every word must be made of letters, digits and ``_ - . / : , + @ %``
(``=`` too, past the first word), so there is no quoting, expansion (``$``, ``~``,
globs, braces), redirection, pipe, list, comment or assignment; the first word must
not be a bash builtin or keyword (``cd``, ``exit``, ``true``, ``echo``: bash's own
would behave differently), nor may the environment export bash functions; and it must
name an executable file that the kernel can run itself (an ELF binary or a ``#!``
script: bash would run any other file itself). In
every other case, or when the program cannot be found, the line goes to ``bash -c``
unchanged, so a missing program still exits 127 with bash's message.

Either way the job sees the same process: bash too executes a lone simple command in
its own place (no fork), so the pid, the process group a cancel signals, and the exit
status are the command's. What bash would have added to the environment is added
here as well: ``PWD`` (the working directory), ``SHLVL`` (kept, or 0) and ``_`` (the
program's path).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["SHELL", "argv_for", "direct_argv"]

SHELL = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"

_FIRST = re.compile(r"[A-Za-z0-9_./:,+@%-]+")
_WORD = re.compile(r"[A-Za-z0-9_./:,+@%=-]+")
# `compgen -b` and `compgen -k` of bash 5.
_BASH_WORDS = (
    ". : [ alias bg bind break builtin caller cd command compgen complete compopt continue "
    "declare dirs disown echo enable eval exec exit export false fc fg getopts hash help "
    "history jobs kill let local logout mapfile popd printf pushd pwd read readarray "
    "readonly return set shift shopt source suspend test times trap true type typeset "
    "ulimit umask unalias unset wait "
    "if then else elif fi case esac for select while until do done in function time { } ! "
    "[[ ]] coproc"
)
_BASH_OWN = frozenset(_BASH_WORDS.split())


def _program(word: str, cwd: Path, path: str) -> str:
    """The file `word` runs (as execvp would find it), or "" if there is none."""
    if "/" in word:
        candidates = [cwd / word]
    else:
        candidates = [Path(d or ".") / word for d in path.split(":")]
        candidates = [c if c.is_absolute() else cwd / c for c in candidates]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            try:
                with open(candidate, "rb") as f:
                    magic = f.read(4)
            except OSError:
                return ""
            if magic == b"\x7fELF" or magic.startswith(b"#!"):
                return str(candidate)
            return ""  # bash would run it as a script itself
    return ""


def direct_argv(line: str, cwd: Path, env: Mapping[str, str]) -> tuple[list[str], str] | None:
    """The argv to execute `line` with directly and the program it finds, or None if it
    needs bash. argv[0] stays the word as written, as bash passes it."""
    words = [w for w in re.split(r"[ \t]+", line) if w]  # bash's blanks; anything else is in a word
    if not words:
        return None
    first, rest = words[0], words[1:]
    if any(key.startswith("BASH_FUNC_") for key in env):  # an exported function may shadow it
        return None
    if first in _BASH_OWN or not _FIRST.fullmatch(first) or not all(_WORD.fullmatch(w) for w in rest):
        return None
    program = _program(first, cwd, env.get("PATH", os.defpath))
    return ([first, *rest], program) if program else None


def argv_for(line: str, cwd: Path, env: dict[str, str]) -> list[str]:
    """How to start `line` in `cwd`: directly (adding what bash would to ``env``), else bash."""
    found = direct_argv(line, cwd, env)
    if found is None:
        return [SHELL, "-c", line]
    argv, program = found
    env["PWD"] = str(cwd)
    env["SHLVL"] = env["SHLVL"] if env.get("SHLVL", "").isdigit() else "0"
    env["_"] = program
    return argv
