"""The merge queue's own process (``python -m node_agent.agents.merge_queue``): a job of
``flota merge``, run in a worktree made at the base like any job's.

It reads its queue (JSON in FLOTA_MERGE_QUEUE: the remote's URL, the branches in order,
the check, the branch to push), and for each branch: fetches it, merges it for real
(``combine.merge_all``: a merge commit, the branch's commits and trailers kept), runs the
check, and on a conflict (the files named) or a failed check (its output's tail) puts the
worktree back as it was before that branch and goes on. The integration branch is then
pushed without force; the outcomes go in a JSON report (FLOTA_MERGE_REPORT) that the
daemon reads as the job's answer (:class:`~node_agent.agents.merge.MergeAgent`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from node_agent.combine import IDENTITY, merge_all
from node_agent.errors import WorkspaceError
from node_agent.git import Git, summarise

__all__ = ["main", "run_queue"]

TAIL_LINES = 15
TAIL_CHARS = 600


def _tail(text: str) -> str:
    lines = text.rstrip().splitlines()[-TAIL_LINES:]
    return "\n".join(lines)[-TAIL_CHARS:]


def _head(git: Git, cwd: Path) -> str:
    return git.output(["rev-parse", "--verify", "HEAD^{commit}"], cwd, what="cannot read HEAD").strip()


def _reset(git: Git, cwd: Path, commit: str) -> None:
    """The worktree back at ``commit``, whatever the check left behind (ignored files stay)."""
    git.output(["reset", "--quiet", "--hard", commit], cwd, what="cannot reset the worktree")
    git.output(["clean", "--quiet", "-fd"], cwd, what="cannot clean the worktree")


def _check(command: str, cwd: Path, timeout_s: float) -> tuple[bool, str]:
    try:
        proc = subprocess.run(  # noqa: S603
            ["/bin/bash", "-c", command],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s or None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode("utf-8", "replace") if isinstance(exc.stdout, bytes) else ""
        return False, _tail(out + f"\n[flota] check timed out after {timeout_s:g} s")
    text = proc.stdout.decode("utf-8", "replace")
    return proc.returncode == 0, _tail(text + ("" if proc.returncode == 0 else f"\n[exit {proc.returncode}]"))


def _one(git: Git, cwd: Path, queue: dict[str, Any], branch: dict[str, Any]) -> dict[str, Any]:
    ref, commit = str(branch["ref"]), str(branch["commit"])
    outcome: dict[str, Any] = {"job": branch.get("job", ""), "branch": ref.removeprefix("refs/heads/")}
    started = time.monotonic()
    before = _head(git, cwd)
    fetched = git.run(["fetch", "--quiet", "--no-tags", str(queue["url"]), ref], cwd)
    if fetched.returncode != 0:
        outcome.update(state="evicted", kind="fetch", reason=summarise(fetched.stderr, fetched.returncode))
        return outcome
    try:
        merge_all(git, cwd, {}, [(ref, commit)])
    except WorkspaceError as exc:
        outcome.update(state="evicted", kind="conflict", reason=str(exc))
        _reset(git, cwd, before)
        return outcome
    check = str(queue.get("check") or "")
    if check:
        ok, tail = _check(check, cwd, float(queue.get("check_timeout_s") or 0))
        outcome["check"] = "passed" if ok else "failed"
        if not ok:
            outcome.update(state="evicted", kind="check", reason=f"the check failed: {check}", tail=tail)
            _reset(git, cwd, before)
            return outcome
        _reset(git, cwd, _head(git, cwd))
    outcome.update(state="merged", head=_head(git, cwd), seconds=round(time.monotonic() - started, 3))
    return outcome


def _prepare_fix(git: Git, cwd: Path, queue: dict[str, Any], head: str, outcome: dict[str, Any]) -> None:
    """The evicted branch merged onto ``head`` on a branch of its own (a conflict committed
    with its markers), pushed for the fixing agent to start from; the worktree left at
    ``head``. Nothing is recorded when that cannot be done (the fix then is not offered)."""
    commit = next(str(b["commit"]) for b in queue["branches"] if b.get("job", "") == outcome["job"])
    target = f"{queue['fixes']}/{outcome['job']}"
    env = {**IDENTITY}
    branch = git.output(["symbolic-ref", "--quiet", "HEAD"], cwd, what="cannot read the branch").strip()
    git.output(["checkout", "--quiet", "--detach", head], cwd, what="cannot detach")
    try:
        message = f"flota: merge {outcome['branch']} (evicted: {outcome['kind']}; to fix)"
        merged = git.run(["merge", "--no-ff", "--no-edit", "--no-verify", "-m", message, commit], cwd, env)
        if merged.returncode != 0:
            git.output(["add", "--all"], cwd, what="cannot stage the conflict", env=env)
            git.output(
                ["commit", "--quiet", "--no-verify", "-m", message + " with its conflicts"],
                cwd,
                what="cannot commit the conflict",
                env=env,
            )
        fix_head = _head(git, cwd)
        pushed = git.run(["push", "--quiet", str(queue["url"]), f"{fix_head}:refs/heads/{target}"], cwd)
        if pushed.returncode == 0:
            outcome.update(fix_ref=target, fix_commit=fix_head)
    finally:
        git.run(["merge", "--abort"], cwd)
        git.output(
            ["checkout", "--quiet", "--force", branch.removeprefix("refs/heads/")], cwd, what="cannot go back"
        )
        _reset(git, cwd, head)


def run_queue(queue: dict[str, Any], cwd: Path, git: Git | None = None) -> dict[str, Any]:
    """Merge the queue's branches into the worktree at ``cwd``, one by one; the report."""
    git = git or Git()
    outcomes = [_one(git, cwd, queue, b) for b in queue.get("branches", [])]
    head = _head(git, cwd)
    if queue.get("fixes"):
        for o in outcomes:
            if o["state"] == "evicted" and o["kind"] in ("conflict", "check"):
                _prepare_fix(git, cwd, queue, head, o)
    report: dict[str, Any] = {"status": "success", "head": head, "outcomes": outcomes, "pushed": ""}
    target = str(queue.get("push") or "")
    if target:
        pushed = git.run(["push", "--quiet", str(queue["url"]), f"{head}:refs/heads/{target}"], cwd)
        if pushed.returncode == 0:
            report["pushed"] = target
        else:
            report.update(
                status="failed",
                error=f"cannot push {target} (it is never forced): "
                f"{summarise(pushed.stderr, pushed.returncode)}",
            )
    return report


def main() -> int:
    report_path = Path(os.environ["FLOTA_MERGE_REPORT"])
    try:
        queue = json.loads(os.environ["FLOTA_MERGE_QUEUE"])
        if not isinstance(queue, dict) or "url" not in queue:
            raise ValueError("not a merge queue")
        report = run_queue(queue, Path.cwd())
    except (KeyError, ValueError, WorkspaceError) as exc:
        report = {"status": "failed", "error": f"merge queue: {exc}", "outcomes": []}
    for o in report.get("outcomes", []):
        print(f"[flota] {o['branch']}: {o['state']}" + (f" ({o['reason']})" if o.get("reason") else ""))
        if o.get("tail"):
            print(o["tail"])
    report_path.write_text(json.dumps(report))
    return 0 if report["status"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
