"""`flota merge --pr`: the pull request opened with the forge's own CLI (gh for GitHub,
glab for GitLab) when it is installed, else the branch and the description file printed
for the user to open it by hand."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from cli.client import EXIT_FAILED, CliError

__all__ = ["forge_of", "open_pr", "pr_command"]

_GITHUB = re.compile(r"^(?:https?://|ssh://git@|git@)github\.com[:/]")
_GITLAB = re.compile(r"^(?:https?://|ssh://git@|git@)gitlab\.com[:/]")


def forge_of(url: str) -> str:
    """github | gitlab | "" (anything else: no CLI to open a pull request with); the
    forge's own name (--forge) stands for itself."""
    if url in ("github", "gitlab"):
        return url
    if _GITHUB.match(url):
        return "github"
    if _GITLAB.match(url):
        return "gitlab"
    return ""


def pr_command(forge: str, title: str, body: Path, base: str, head: str) -> list[str]:
    if forge == "github":
        return [
            "gh",
            "pr",
            "create",
            "--title",
            title,
            "--body-file",
            str(body),
            "--base",
            base,
            "--head",
            head,
        ]
    return [
        "glab", "mr", "create", "--title", title, "--description", body.read_text(),
        "--target-branch", base, "--source-branch", head, "--yes",
    ]  # fmt: skip


def open_pr(url: str, repo: str, title: str, body: Path, base: str, head: str) -> str:
    """Open the pull request; the forge CLI's answer (its URL), or the instructions to do it
    by hand (no forge CLI, or a remote on neither forge)."""
    forge = forge_of(url)
    tool = {"github": "gh", "gitlab": "glab"}.get(forge, "")
    if not tool or shutil.which(tool) is None:
        why = f"{tool} is not installed" if tool else f"{url} is on neither GitHub nor GitLab"
        return (
            f"no pull request opened ({why}): open one from branch {head} into {base}, "
            f"with the description in {body}"
        )
    proc = subprocess.run(  # noqa: S603
        pr_command(forge, title, body, base, head), cwd=repo, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise CliError(
            f"{tool} could not open the pull request: {last[0]} (description: {body})", EXIT_FAILED
        )
    return proc.stdout.strip()
