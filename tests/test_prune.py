"""`flota prune` end to end: a real coordinator and nodes, a bare remote, the real CLI.

A run is made "old" by waiting: `--older-than` takes seconds, so a limit of a second or
two, or the gap between two runs' ends, splits old from young without touching the store.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.fleet import Fleet, git, make_repo, wait_until
from tests.test_events import Events


def _run(fleet: Fleet, *args: str) -> dict[str, Any]:
    result = fleet.flota("--json", "run", *args, "--follow")
    assert result.returncode == 0, result.stderr
    run: dict[str, Any] = json.loads(result.stdout)
    return run


def _refs(repo: Path, run_id: str) -> list[str]:
    """The refs of `repo` (a bare remote or a node's mirror) that belong to run `run_id`."""
    names = git("--git-dir", str(repo), "for-each-ref", "--format=%(refname)").split()
    return sorted(n for n in names if f"/{run_id}/" in n or n.endswith(f"/{run_id}"))


def _mirror_refs(fleet: Fleet, node: str, run_id: str) -> list[str]:
    mirrors = sorted((fleet.home / "nodes" / node / "work" / "mirrors").glob("*.git"))
    assert mirrors, f"{node} has no mirror"
    return sorted(ref for m in mirrors for ref in _refs(m, run_id))


def _worktrees(fleet: Fleet, node: str, run_id: str) -> list[str]:
    root = fleet.home / "nodes" / node / "work" / "worktrees"
    return sorted(p.name for p in root.iterdir() if p.name.startswith(f"{run_id}."))


def _older_than(run: dict[str, Any], seconds: float) -> None:
    wait_until(lambda: time.time() - run["finished_at"] > seconds, timeout=30, what="the run to age")


def _prune(fleet: Fleet, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = fleet.flota("--json", "prune", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result, json.loads(result.stdout)


def test_prune_removes_an_old_run_everywhere_and_nothing_younger(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo", "--slots", "3")
    work, remote = make_repo(tmp_path / "repo")
    # Started first, so the oldest run of all; but it has not ended, and never is pruned.
    running = fleet.json("run", "--repo", str(work), "sleep 60")
    old = _run(fleet, "--repo", str(work), "-t", "echo one > a", "-t", "echo two > b")
    rid = old["id"]
    on_remote = [f"refs/flota/base/{rid}", f"refs/heads/flota/{rid}/1", f"refs/heads/flota/{rid}/2"]
    assert _refs(remote, rid) == on_remote
    # The node's mirror fetched no base ref for it: the commit was there already.
    assert _mirror_refs(fleet, "solo", rid) == on_remote[1:]
    assert len(_worktrees(fleet, "solo", rid)) == 2
    _older_than(old, 1.5)

    # Without a terminal to ask on, and without --yes: refused before anything is asked.
    refused = fleet.flota("prune", "--older-than", "1s")
    assert refused.returncode == 2, refused
    assert refused.stderr.count("\n") == 1 and "no terminal to ask on" in refused.stderr
    assert "nothing was removed" in refused.stderr

    # A dry run lists, per remote, and removes nothing.
    result, plan = _prune(fleet, "--older-than", "1s", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert plan["dry_run"] is True
    assert [(r["id"], r["jobs"], r["refs"], r["nodes"], r["forgotten"]) for r in plan["runs"]] == [
        (rid, 2, 3, ["solo"], False)
    ]
    assert plan["remotes"] == [{"url": str(remote), "refs": on_remote, "removed": 0, "error": ""}]
    text = fleet.flota("prune", "--older-than", "1s", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert rid in text.stdout and f"{remote}: 2 branches (flota/RUN/...), 1 other ref" in text.stdout
    assert "nodes solo:" in text.stdout and "nothing was removed" in text.stdout
    assert _refs(remote, rid) == on_remote and len(_worktrees(fleet, "solo", rid)) == 2
    assert fleet.flota("status", rid).returncode == 0

    # A younger run; the limit falls between the two runs' ends.
    young = _run(fleet, "--repo", str(work), "-t", "echo three > c")
    limit = young["finished_at"] - old["finished_at"] - 0.2
    assert limit > 1
    young_refs = _refs(remote, young["id"])
    result, reply = _prune(fleet, "--older-than", f"{limit:.1f}s", "--yes")
    assert result.returncode == 0, result.stderr
    assert [(r["id"], r["forgotten"], r["kept"]) for r in reply["runs"]] == [(rid, True, "")]
    assert reply["remotes"][0]["removed"] == 3
    assert reply["worktrees_removed"] == 2 and reply["node_refs_removed"] == 2
    # Progress on stderr (stdout was the JSON above).
    progress = result.stderr.splitlines()
    assert f"removing 3 refs from {remote}: 3/3" in progress, progress
    assert f"removing worktrees and refs of {rid} on solo: 3/3" in progress, progress
    assert "forgetting the runs: 1/1" in progress, progress

    assert _refs(remote, rid) == [] and _mirror_refs(fleet, "solo", rid) == []
    assert _worktrees(fleet, "solo", rid) == []
    gone = fleet.flota("status", rid)
    assert gone.returncode == 2 and f"no run '{rid}'" in gone.stderr
    assert fleet.flota("logs", f"{rid}.1").returncode == 2  # its jobs and logs went with it
    assert "main" in git("branch", "--list", "main", cwd=remote)  # the user's own branches stay
    # The younger run and the running one are untouched.
    assert _refs(remote, young["id"]) == young_refs and len(young_refs) == 2
    assert _mirror_refs(fleet, "solo", young["id"]) and _worktrees(fleet, "solo", young["id"])
    assert fleet.json("status", young["id"])["status"] == "success"
    assert fleet.json("status", running["id"])["status"] == "running"
    assert _refs(remote, running["id"]) == [f"refs/flota/base/{running['id']}"]
    # Nothing is left that is old enough.
    result, again = _prune(fleet, "--older-than", f"{limit:.1f}s", "--yes")
    assert result.returncode == 0 and again["runs"] == []
    fleet.flota("cancel", running["id"], check=True)


def test_prune_keeps_what_it_cannot_reach_and_finishes_later(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("alpha")
    fleet.start_node("beta")
    work, remote = make_repo(tmp_path / "repo")
    old = _run(fleet, "--repo", str(work), "--spread", "-t", "echo 1 > a", "-t", "echo 2 > b")
    rid = old["id"]
    assert {j["node_name"] for j in old["jobs"]} == {"alpha", "beta"}
    on_remote = _refs(remote, rid)
    assert len(on_remote) == 3
    _older_than(old, 1.5)

    # The remote cannot be read: nothing of the run is touched anywhere, and it is kept.
    hidden = remote.with_name("hidden.git")
    remote.rename(hidden)
    result, reply = _prune(fleet, "--older-than", "1s", "--yes")
    assert result.returncode == 1, result.stderr
    assert reply["remotes"][0]["error"].startswith(f"cannot list {remote}")
    assert [(r["id"], r["forgotten"]) for r in reply["runs"]] == [(rid, False)]
    assert reply["runs"][0]["kept"].startswith(f"cannot list {remote}")
    hidden.rename(remote)
    assert _refs(remote, rid) == on_remote and _mirror_refs(fleet, "alpha", rid)
    assert fleet.flota("status", rid).returncode == 0

    # beta is offline: the remote and alpha are pruned; beta's mirror keeps the run's refs,
    # and so the coordinator keeps the run, to finish it once beta is back.
    fleet.stop("beta")
    fleet.wait_node("beta", "offline")
    beta_refs = _mirror_refs(fleet, "beta", rid)
    assert beta_refs
    # cleanup says so too, in JSON as in text: exit 1.
    cleaned = fleet.flota("--json", "cleanup", rid)
    assert cleaned.returncode == 1, cleaned.stderr
    assert json.loads(cleaned.stdout) == {"worktrees_removed": 1, "nodes_unreachable": ["beta"]}
    assert f"removing worktrees of {rid} on alpha: 1/1" in cleaned.stderr.splitlines()
    assert _worktrees(fleet, "beta", rid)
    result, reply = _prune(fleet, "--older-than", "1s", "--yes")
    assert result.returncode == 1, result.stderr
    assert reply["nodes_unreachable"] == ["beta"]
    assert reply["runs"][0]["forgotten"] is False and reply["runs"][0]["kept"].startswith("node beta:")
    assert _refs(remote, rid) == [] and _mirror_refs(fleet, "alpha", rid) == []
    assert _mirror_refs(fleet, "beta", rid) == beta_refs
    text = fleet.flota("prune", "--older-than", "1s", "--yes")
    assert text.returncode == 1 and f"kept {rid}: node beta:" in text.stdout, text.stdout

    fleet.start_node("beta", join=False)
    result, reply = _prune(fleet, "--older-than", "1s", "--yes")
    assert result.returncode == 0, result.stderr
    assert [(r["id"], r["forgotten"]) for r in reply["runs"]] == [(rid, True)]
    assert reply["remotes"][0]["refs"] == []  # already gone from the remote
    assert _mirror_refs(fleet, "beta", rid) == [] and _worktrees(fleet, "beta", rid) == []
    assert fleet.flota("status", rid).returncode == 2

    # A node that is removed from the fleet holds no run back: its disk is not ours any more.
    second = _run(fleet, "--repo", str(work), "--spread", "-t", "echo 3 > c", "-t", "echo 4 > d")
    fleet.stop("beta")
    fleet.flota("node", "remove", "beta", check=True)
    _older_than(second, 1.5)
    result, reply = _prune(fleet, "--older-than", "1s", "--yes")
    assert result.returncode == 0, result.stderr
    assert [(r["id"], r["forgotten"]) for r in reply["runs"]] == [(second["id"], True)]
    assert reply["nodes_unreachable"] == [] and _refs(remote, second["id"]) == []
    assert _mirror_refs(fleet, "alpha", second["id"]) == [] and _mirror_refs(fleet, "beta", second["id"])


def _on_a_terminal(fleet: Fleet, args: list[str], answer: str) -> tuple[int, str, str]:
    """Run the CLI with stdin and stderr on a pseudo-terminal, answer its question; (exit
    code, stdout, what the terminal showed)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [fleet.python, "-m", "cli", *args],
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=follower,
        env=fleet.env,
        cwd=fleet.home,
    )
    os.close(follower)
    shown, answered = b"", False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the CLI exited: the terminal is gone
                    break
                if not chunk:
                    break
                shown += chunk
            if not answered and b"[y/N]" in shown:
                os.write(leader, answer.encode() + b"\n")
                answered = True
            if proc.poll() is not None and not ready:
                break
        out = proc.communicate(timeout=30)[0].decode()
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    assert answered, shown
    return proc.returncode, out, shown.decode(errors="replace")


def test_on_a_terminal_prune_asks_first(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    work, remote = make_repo(tmp_path / "repo")
    old = _run(fleet, "--repo", str(work), "echo hi > a")
    rid = old["id"]
    on_remote = _refs(remote, rid)
    _older_than(old, 1.5)

    code, out, shown = _on_a_terminal(fleet, ["prune", "--older-than", "1s"], "n")
    assert code == 1 and rid in out and "remove all of this? [y/N]" in shown, (out, shown)
    assert "not confirmed; nothing was removed" in shown
    assert _refs(remote, rid) == on_remote and fleet.flota("status", rid).returncode == 0

    code, out, shown = _on_a_terminal(fleet, ["prune", "--older-than", "1s"], "y")
    assert code == 0, (out, shown)
    assert "removed 1 run, 2 refs from the remotes" in out
    assert _refs(remote, rid) == [] and fleet.flota("status", rid).returncode == 2


def test_prune_shows_progress_while_it_works(fleet: Fleet, tmp_path: Path) -> None:
    """The progress line comes while the work is under way, not with the reply: here the
    remote holds the deletion (a pre-receive hook waits for a file) while we read stderr.
    The event stream then says the run was removed."""
    fleet.start_coordinator()
    fleet.start_node("solo")
    work, remote = make_repo(tmp_path / "repo")
    old = _run(fleet, "--repo", str(work), "echo hi > a")
    rid = old["id"]
    gate = tmp_path / "gate"
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nwhile [ ! -e '{gate}' ]; do sleep 0.05; done\n")
    hook.chmod(0o755)
    _older_than(old, 1.5)

    events = Events(fleet, "--topic", f"run:{rid}")
    events.until(lambda e: e["type"] == "live", what="the stream's snapshot")
    proc = subprocess.Popen(
        [fleet.python, "-m", "cli", "--json", "prune", "--older-than", "1s", "--yes"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=fleet.env,
        cwd=fleet.home,
        text=True,
    )
    try:
        assert proc.stderr is not None
        waiting = f"removing 2 refs from {remote}: 0/2\n"
        lines = []
        while waiting not in lines:
            line = proc.stderr.readline()
            assert line, (lines, proc.wait(5))
            lines.append(line)
        time.sleep(0.5)
        assert proc.poll() is None  # still under way, held by the remote
        assert len(_refs(remote, rid)) == 2
        gate.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    assert proc.returncode == 0, err
    assert f"removing 2 refs from {remote}: 2/2" in err.splitlines()
    assert json.loads(out)["runs"][0]["forgotten"] is True
    assert _refs(remote, rid) == []
    # Whoever follows the fleet's events (flota events, flota top) hears it is gone.
    assert events.until(lambda e: e["type"] == "run.removed", what="run.removed")["run"]["id"] == rid
    events.stop()
