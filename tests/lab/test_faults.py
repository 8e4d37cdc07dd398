"""Faults across lab hosts: crashed and frozen daemons, cut links, a coordinator killed
mid-run, cancels that must leave nothing behind, a full or read-only disk.

Real processes in network namespaces, real mTLS, a real bare git remote on the shared
filesystem. Each test asserts the final state of every job, attempt and branch.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from protos.contract import RUN_ACTIVE
from tests.fleet import Fleet, git, make_repo
from tests.lab.netlab import Lab
from tests.lab.test_multihost import FINAL, Site, job_if, node_state, poll

pytestmark = pytest.mark.lab

NODES = ("n1", "n2", "n3")


@pytest.fixture
def site(lab: Lab) -> Iterator[Site]:
    lan = lab.add_network("lan")
    ws = lab.add_host("ws", [lan])
    hosts = {name: lab.add_host(name, [lan]) for name in NODES}
    fleet = Fleet(ws.dir / "home", cli_prefix=ws.command([]))
    try:
        yield Site(lab, fleet, ws, hosts)
    finally:
        fleet.close()


def coordinator(site: Site, *args: str) -> dict[str, Any]:
    """On a fixed port, so that a restarted coordinator is where the nodes expect it."""
    coord = site.fleet.start_coordinator(
        "--advertise", site.ws.address(), *args, listen="0.0.0.0:7370", prefix=site.ws.command([])
    )
    return coord


def node(site: Site, name: str, *args: str, join: bool = True) -> subprocess.Popen[bytes]:
    return site.fleet.start_node(
        name,
        "--no-mdns",
        *args,
        join=join,
        listen="0.0.0.0:0",
        prefix=site.hosts[name].command([]),
        state=site.state_dir(name),
    )


def marked(marker: str) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or []):
                out.append(proc)
        except psutil.Error:
            continue
    return out


def remote_file(remote: Path, branch: str, path: str) -> str:
    return git("--git-dir", str(remote), "show", f"refs/heads/{branch}:{path}")


def branches(remote: Path) -> set[str]:
    out = git("--git-dir", str(remote), "for-each-ref", "--format=%(refname:short)", "refs/heads/flota")
    return set(out.split())


def final(fleet: Fleet, job_id: str, timeout: float = 60) -> dict[str, Any]:
    return poll(lambda: job_if(fleet, job_id, *FINAL), timeout=timeout, what=f"{job_id} final")[1]


# ------------------------------------------------------------------------------ 1


def test_node_daemon_killed_five_times_mid_job_reattaches(site: Site, tmp_path: Path) -> None:
    fleet = site.fleet
    work, remote = make_repo(tmp_path / "repo")
    coordinator(site)
    node(site, "n1")
    marker = f"flota-k9-{time.time_ns()}"
    gate = tmp_path / "gate"
    command = (
        f"echo start; echo one > out.txt; while [ ! -e {gate} ]; do sleep 0.05; done; "
        f"echo two >> out.txt; echo end; : {marker}"
    )
    job_id = fleet.json("run", "--repo", str(work), "--retries", "0", command)["jobs"][0]["id"]
    poll(lambda: job_if(fleet, job_id, "running") and marked(marker), what="job running")
    pids = {p.pid for p in marked(marker)}
    for round_ in range(5):
        fleet.stop("n1", signal.SIGKILL)
        assert {p.pid for p in marked(marker)} == pids, f"round {round_}: the job must outlive the daemon"
        node(site, "n1", join=False)
        poll(lambda: node_state(fleet, "n1", "online"), what="n1 back online")
    gate.touch()
    job = final(fleet, job_id)
    assert job["status"] == "success", job
    assert [a["status"] for a in job["attempts"]] == ["success"]
    assert fleet.flota("logs", job_id, check=True).stdout == "start\nend\n"
    branch = job["branch"]
    assert remote_file(remote, branch, "out.txt") == "one\ntwo\n"
    assert branches(remote) == {branch}
    poll(lambda: not marked(marker), what="job processes gone")
    # The journal is empty once the coordinator has the result: acked exactly once.
    poll(lambda: not list((site.state_dir("n1") / "jobs").iterdir()), what="journal emptied")


# ------------------------------------------------------------------------------ 2 and 4


def _partition(site: Site, tmp_path: Path, freeze: bool) -> None:
    """A node with a running job disappears (cut link, or a frozen daemon) past the grace;
    the job completes elsewhere; the node comes back with its own, late, result."""
    fleet = site.fleet
    work, remote = make_repo(tmp_path / "repo")
    coordinator(site, "--unreachable-after", "1", "--lost-after", "3")
    for name in ("n1", "n2"):
        node(site, name)
    gate = tmp_path / "gate"
    command = f'echo "$FLOTA_NODE_NAME" > who.txt; while [ ! -e {gate} ]; do sleep 0.05; done; echo done'
    job_id = fleet.json("run", "--repo", str(work), "--retries", "1", command)["jobs"][0]["id"]
    _, first = poll(lambda: job_if(fleet, job_id, "running"), what="job running")
    victim = first["node_name"]
    (survivor,) = {"n1", "n2"} - {victim}

    if freeze:
        fleet.procs[victim].send_signal(signal.SIGSTOP)
    else:
        site.hosts[victim].link_down()
    try:
        poll(lambda: node_state(fleet, victim, "unreachable", "lost"), what=f"{victim} unreachable")
        poll(lambda: node_state(fleet, victim, "lost"), what=f"{victim} lost")
        poll(
            lambda: (j := job_if(fleet, job_id, "running")) and j["node_name"] == survivor,
            what=f"job retried on {survivor}",
        )
        gate.touch()  # both copies finish: the retry first, the partitioned one meanwhile
        job = final(fleet, job_id)
        assert (job["status"], job["node_name"]) == ("success", survivor), job
    finally:
        if freeze:
            fleet.procs[victim].send_signal(signal.SIGCONT)
        else:
            site.hosts[victim].link_up()

    def recorded() -> dict[str, Any] | None:
        j: dict[str, Any] = fleet.json("status", job_id)
        return j if j["attempts"][0]["status"] == "superseded" else None

    _, job = poll(recorded, what="the late result recorded as superseded")
    first_attempt, retry = job["attempts"]
    assert (first_attempt["node_name"], retry["node_name"]) == (victim, survivor)
    assert (retry["status"], job["status"], job["branch"]) == ("success", "success", retry["branch"])
    assert job["result"]["branch"] == retry["branch"]
    # Never a lost branch: both attempts' work is on the remote.
    assert branches(remote) == {first_attempt["branch"], retry["branch"]}
    assert remote_file(remote, first_attempt["branch"], "who.txt") == f"{victim}\n"
    assert remote_file(remote, retry["branch"], "who.txt") == f"{survivor}\n"
    run = fleet.json("status", job_id.rpartition(".")[0])
    assert run["status"] == "success"


def test_cut_link_mid_job_late_result_is_superseded(site: Site, tmp_path: Path) -> None:
    _partition(site, tmp_path, freeze=False)


def test_sleeping_daemon_past_the_grace_late_result_is_superseded(site: Site, tmp_path: Path) -> None:
    _partition(site, tmp_path, freeze=True)


# ------------------------------------------------------------------------------ 3


def test_coordinator_killed_mid_run_every_job_ends_exactly_once(site: Site, tmp_path: Path) -> None:
    fleet = site.fleet
    coordinator(site)
    for name in NODES:
        node(site, name, "--slots", "2")
    marker = f"flota-c9-{time.time_ns()}"
    tasks = [f"sleep {1 + i % 3}; echo task-{i}; : {marker}" for i in range(20)]
    run = fleet.json("run", *[arg for t in tasks for arg in ("-t", t)])
    poll(lambda: len(marked(marker)) >= 4, what="jobs in flight")
    fleet.stop("coordinator", signal.SIGKILL)
    time.sleep(2.5)  # jobs end while nobody listens: their results wait in the journals
    coordinator(site)
    poll(lambda: all(node_state(fleet, n, "online") for n in NODES), what="nodes reconnected")
    _, done = poll(
        lambda: (r := fleet.json("status", run["id"]))["status"] not in RUN_ACTIVE and r,
        timeout=90,
        what="run end",
    )
    assert done["status"] == "success", [(j["id"], j["status"], j["result"]["error"]) for j in done["jobs"]]
    assert len(done["jobs"]) == 20
    for i, job in enumerate(done["jobs"]):
        assert [a["status"] for a in job["attempts"]] == ["success"], job
        assert fleet.flota("logs", job["id"], check=True).stdout == f"task-{i}\n"
    assert len({j["node_name"] for j in done["jobs"]}) == 3


# ------------------------------------------------------------------------------ 5


def test_cancel_leaves_no_process_of_the_job(site: Site, tmp_path: Path) -> None:
    fleet = site.fleet
    work, remote = make_repo(tmp_path / "repo")
    coordinator(site)
    node(site, "n1")
    marker = f"flota-cx-{time.time_ns()}"
    command = (
        f"echo wip > wip.txt; "
        f"(sleep 300; : {marker}) & "  # a background child
        f"(trap '' TERM; sleep 300; : {marker}) & "  # one that ignores SIGTERM
        f"setsid sh -c 'sleep 300; : {marker}' & "  # one that left the process group
        f"nohup sh -c 'sleep 300; : {marker}' >/dev/null 2>&1 & "
        f"sleep 300; : {marker}"
    )
    job_id = fleet.json("run", "--repo", str(work), command)["jobs"][0]["id"]
    poll(lambda: len(marked(marker)) >= 5, what="the job's processes")
    fleet.flota("cancel", job_id, check=True)
    job = final(fleet, job_id)
    assert job["status"] == "cancelled", job
    poll(lambda: not marked(marker), timeout=15, what="every process of the job gone")
    # The worktree stays for inspection until cleanup; the work is on its branch.
    worktree = site.state_dir("n1") / "work" / "worktrees" / job["attempts"][0]["id"]
    assert (worktree / "wip.txt").read_text() == "wip\n"
    assert remote_file(remote, job["branch"], "wip.txt") == "wip\n"


# ------------------------------------------------------------------------------ 6


def test_full_or_read_only_workspace_fails_the_job_and_the_node_serves_on(site: Site, tmp_path: Path) -> None:
    fleet = site.fleet
    work, remote = make_repo(tmp_path / "repo")
    coordinator(site)
    state = site.join("n1")
    mount = state / "work"
    mount.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "flota-test", str(mount)], check=True)
    try:
        node(site, "n1", join=False)
        filler = mount / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
        full = final(fleet, fleet.json("run", "--repo", str(work), "echo hi > a.txt")["jobs"][0]["id"])
        assert full["status"] == "failed"
        assert "No space left on device" in full["result"]["error"], full["result"]
        assert node_state(fleet, "n1", "online")

        filler.unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        ro = final(fleet, fleet.json("run", "--repo", str(work), "echo hi > a.txt")["jobs"][0]["id"])
        assert ro["status"] == "failed"
        assert "Read-only file system" in ro["result"]["error"], ro["result"]

        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        ok = final(fleet, fleet.json("run", "--repo", str(work), "echo hi > a.txt")["jobs"][0]["id"])
        assert ok["status"] == "success", ok
        assert remote_file(remote, ok["branch"], "a.txt") == "hi\n"
        assert fleet.procs["n1"].poll() is None
    finally:
        fleet.stop("n1")
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ------------------------------------------------------------------------------ partial work


def test_cut_off_node_pushes_its_work_and_the_retry_resumes_from_it(site: Site, tmp_path: Path) -> None:
    fleet = site.fleet
    work, remote = make_repo(tmp_path / "repo")
    coordinator(site, "--unreachable-after", "1", "--lost-after", "10")
    node(site, "n1", "--stop-after-disconnect", "1")
    command = (
        "if [ -e progress.txt ]; then echo resumed >> progress.txt; echo resumed; "
        "else echo started > progress.txt; echo started; sleep 300; fi"
    )
    submitted = fleet.json("run", "--repo", str(work), "--retries", "1", "--resume-from-partial", command)
    job_id = submitted["jobs"][0]["id"]
    poll(lambda: job_if(fleet, job_id, "running"), what="job running on n1")
    node(site, "n2")  # only now: the first attempt is n1's
    first_branch = f"flota/{submitted['id']}/1"
    site.hosts["n1"].link_down()
    try:
        # n1 stops the job itself and pushes what it made (the remote is on the shared disk).
        poll(lambda: first_branch in branches(remote), timeout=30, what="the work in progress pushed")
        assert remote_file(remote, first_branch, "progress.txt") == "started\n"
        job = final(fleet, job_id, timeout=60)
    finally:
        site.hosts["n1"].link_up()
    assert (job["status"], job["node_name"]) == ("success", "n2"), job
    retry = job["attempts"][1]
    assert remote_file(remote, retry["branch"], "progress.txt") == "started\nresumed\n"
    # The retry's own lines (n1's late output, e.g. the shell's "Terminated", may follow).
    lines = fleet.flota("--json", "logs", job_id, check=True).stdout.splitlines()
    retry_lines = [json.loads(x)["line"] for x in lines if json.loads(x)["attempt_id"] == retry["id"]]
    assert retry_lines[0].startswith(f"[flota: resuming from {first_branch}"), retry_lines
    assert retry_lines[1:] == ["resumed"], retry_lines

    def partial_recorded() -> dict[str, Any] | None:
        j: dict[str, Any] = fleet.json("status", job_id)
        return j if j["attempts"][0]["status"] == "partial" else None

    _, job = poll(partial_recorded, what="n1's partial result delivered when it is back")
    assert "cut off from the coordinator" in job["attempts"][0]["error"]
    assert job["status"] == "success" and job["result"]["branch"] == retry["branch"]
