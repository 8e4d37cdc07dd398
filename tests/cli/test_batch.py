"""cli/batch.py without a fleet: the glob rules, and placeholders filled so that a real
bash gets each input back as one argument, byte for byte."""

from __future__ import annotations

import subprocess

import pytest

from cli.batch import Input, fill, glob_regex
from cli.client import CliError

PATHS = ["a.md", "docs/a.md", "docs/sub/b.md", "docs/sub/deep/c.md", "docs/x.txt", "docs/b c.md", "dox/a.md"]


@pytest.mark.parametrize(
    ("pattern", "matched"),
    [
        ("*.md", ["a.md"]),  # * stays within a path part
        ("docs/*.md", ["docs/a.md", "docs/b c.md"]),
        ("docs/**/*.md", ["docs/a.md", "docs/sub/b.md", "docs/sub/deep/c.md", "docs/b c.md"]),
        ("**/*.md", ["a.md", "docs/a.md", "docs/sub/b.md", "docs/sub/deep/c.md", "docs/b c.md", "dox/a.md"]),
        ("do?s/a.md", ["docs/a.md"]),
        ("do[cx]/a.md", ["dox/a.md"]),  # a class is one character ("docs" has one more)
        ("do[!x]s/a.md", ["docs/a.md"]),
        ("doc[s]/sub/**", ["docs/sub/b.md", "docs/sub/deep/c.md"]),
        ("docs/x.txt", ["docs/x.txt"]),
        ("docs/a.m", []),  # whole paths only
    ],
)
def test_glob_rules(pattern: str, matched: list[str]) -> None:
    regex = glob_regex(pattern)
    assert [p for p in PATHS if regex.fullmatch(p)] == matched


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("", "needs a glob"),
        ("/etc/*", "relative to the repository"),
        ("../x/*", "without .."),
        ("a[b", "a [ without"),
    ],
)
def test_bad_globs_are_one_line(pattern: str, why: str) -> None:
    with pytest.raises(CliError, match=why.replace("[", r"\[")):
        glob_regex(pattern)


NASTY = [
    "plain",
    "two  spaces",
    "it's",
    '"double"',
    "$(id) `id` ${HOME} $HOME",
    "; rm -rf / #",
    "back\\slash\\",
    "ünïcødé ✓ 日本語 🚀",
    "-n",
    "tab\there",
    "{input}",
    "",
]


@pytest.mark.parametrize("value", NASTY)
def test_a_shell_task_gets_each_input_back_verbatim(value: str) -> None:
    command = fill("printf '%s' {input}", Input("line 1", value), shell=True)
    out = subprocess.run(["bash", "-c", command], capture_output=True, check=True).stdout
    assert out.decode() == value


def test_json_fields_fill_and_a_missing_one_is_named() -> None:
    item = Input("line 3 of t.jsonl", '{"a": 1}', fields={"text": "it's", "n": "3"})
    assert fill("{text}|{n}|${KEEP}", item, shell=False) == "it's|3|${KEEP}"
    with pytest.raises(CliError, match=r"line 3 of t.jsonl has no field 'other' \(the task uses \{other\}\)"):
        fill("{other}", item, shell=True)
    # With line inputs only {input} is a placeholder: awk's braces are the command's own.
    assert fill("awk '{print}' {input}", Input("line 1", "f"), shell=True) == "awk '{print}' f"
