"""End to end on loopback: a coordinator and node daemons as separate processes,
real mutual TLS, real git remotes, driven through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.fleet import Fleet, git, make_repo, wait_until


def _run(fleet: Fleet, *args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = fleet.flota("--json", "run", *args, "--follow", cwd=cwd)
    assert "Traceback" not in result.stderr, result.stderr
    return result, json.loads(result.stdout)


def test_jobs_run_across_two_nodes_and_push_their_branches(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("alpha", "--slots", "2")
    fleet.start_node("beta", "--slots", "2")
    work, remote = make_repo(tmp_path / "repo", {"src/app.py": "print('v1')\n", "README.md": "demo\n"})

    result, run = _run(
        fleet,
        "--repo",
        str(work),
        "-t",
        "echo alpha-was-here > notes.txt",
        "-t",
        "sed -i s/v1/v2/ src/app.py",
        "-t",
        "git rm -q README.md",
        "-t",
        "echo nothing to change",
    )
    assert result.returncode == 0, result.stderr
    assert run["status"] == "success"
    jobs = {j["id"].rsplit(".", 1)[1]: j for j in run["jobs"]}
    assert {j["node_name"] for j in jobs.values()} == {"alpha", "beta"}  # spread over both machines
    for index, job in jobs.items():
        assert job["result"]["status"] == "success"
        assert job["result"]["base_commit"] == run["base_commit"]
        if index == "4":  # it changed nothing: no branch (tests/test_no_changes.py)
            assert job["branch"] == job["result"]["branch"] == ""
            continue
        assert job["branch"] == f"flota/{run['id']}/{index}"
        # The branch is on the remote, at the head the result names.
        assert git("rev-parse", job["branch"], cwd=remote).strip() == job["result"]["head_commit"]
        message = git("log", "-1", "--format=%B", job["branch"], cwd=remote)
        assert f"Flota-Job: {job['id']}" in message
        assert f"Flota-Node: {job['node_name']}" in message
    assert git("show", f"{jobs['1']['branch']}:notes.txt", cwd=remote) == "alpha-was-here\n"
    assert git("show", f"{jobs['2']['branch']}:src/app.py", cwd=remote) == "print('v2')\n"
    assert jobs["1"]["result"]["files_modified"] == ["notes.txt"]
    assert jobs["2"]["result"]["files_modified"] == ["src/app.py"]
    assert jobs["3"]["result"]["files_modified"] == ["README.md"]
    assert jobs["3"]["result"]["deletions"] == 1
    assert jobs["4"]["result"]["files_modified"] == []
    # The user's repository is untouched: no new branch, same HEAD.
    assert git("branch", "--list", "flota/*", cwd=work) == ""

    # The results are recorded: they read back the same after the fact.
    results = fleet.json("results", run["id"])
    assert [r["status"] for r in results] == ["success"] * 4
    assert fleet.flota("logs", jobs["4"]["id"]).stdout == "nothing to change\n"


def test_failed_job_makes_the_run_fail_with_exit_code_1(fleet: Fleet) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    result, run = _run(fleet, "-t", "echo fine", "-t", "echo broken >&2; exit 7")
    assert result.returncode == 1
    assert run["status"] == "failed"
    failed = run["jobs"][1]
    assert failed["status"] == "failed"
    assert failed["result"]["exit_code"] == 7
    assert "broken" in failed["result"]["log_tail"]
    assert fleet.flota("results", run["id"]).returncode == 1


def test_from_working_tree_carries_uncommitted_changes(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    work, remote = make_repo(tmp_path / "repo", {"a.txt": "committed\n"})
    (work / "a.txt").write_text("edited but not committed\n")
    (work / "new.txt").write_text("untracked\n")
    result, run = _run(fleet, "--repo", str(work), "--from-working-tree", "cat a.txt new.txt")
    assert result.returncode == 0, result.stderr
    log = fleet.flota("logs", run["jobs"][0]["id"]).stdout
    assert log == "edited but not committed\nuntracked\n"
    # The user's index and working tree are as they were.
    assert git("status", "--porcelain", cwd=work) == " M a.txt\n?? new.txt\n"


def test_placement_by_network_labels_pin_and_exclusive(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("home-box", "--network", "home", "--label", "role=build", "--slots", "3")
    fleet.start_node("vpn-box", "--network", "vpn", "--label", "role=research", "--slots", "3")

    _, run = _run(fleet, "--network", "vpn", "-t", "true", "-t", "true", "-t", "true")
    assert {j["node_name"] for j in run["jobs"]} == {"vpn-box"}
    _, run = _run(fleet, "--avoid-network", "vpn", "true")
    assert run["jobs"][0]["node_name"] == "home-box"
    _, run = _run(fleet, "--label", "role=research", "true")
    assert run["jobs"][0]["node_name"] == "vpn-box"
    _, run = _run(fleet, "--on", "home-box", "-t", "true", "-t", "true")
    assert {j["node_name"] for j in run["jobs"]} == {"home-box"}

    # Exclusive: while it runs, nothing else is placed on its node.
    gate = tmp_path / "exclusive-may-end"  # it runs until the test has looked (no race with a sleep)
    excl = fleet.json("run", "--on", "vpn-box", "--exclusive", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    wait_until(
        lambda: fleet.json("status", excl["id"])["jobs"][0]["status"] == "running",
        what="exclusive job running",
    )
    other = fleet.json("run", "--on", "vpn-box", "true")
    time.sleep(0.5)  # give the scheduler several passes to (wrongly) place it
    job = fleet.json("status", other["jobs"][0]["id"])
    assert job["status"] == "queued"
    assert "exclusive" in job["wait_reason"], job["wait_reason"]
    gate.touch()
    wait_until(
        lambda: fleet.json("status", other["id"])["status"] == "success", what="queued job to run after"
    )
    first = fleet.json("status", excl["id"])["jobs"][0]["result"]
    second = fleet.json("status", other["id"])["jobs"][0]["result"]
    assert second["started_at"] >= first["finished_at"]

    # No node can take it: the job waits and says why.
    waiting = fleet.json("run", "--network", "office", "true")
    wait_until(
        lambda: "office" in fleet.json("status", waiting["jobs"][0]["id"])["wait_reason"], what="wait reason"
    )
    fleet.flota("cancel", waiting["id"], check=True)


def test_timeout_and_cancel_kill_the_whole_process_group(fleet: Fleet) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo", "--slots", "2")
    result, run = _run(fleet, "--timeout", "1", "sleep 60 & sleep 60 & wait")
    assert result.returncode == 1
    job = run["jobs"][0]
    assert job["status"] == "timeout"
    assert "timed out" in job["result"]["error"]

    marker = f"flota-cancel-{os.getpid()}-{time.time_ns()}"
    started = fleet.json("run", f"sh -c 'sleep 300; : {marker}' & sleep 300 # {marker}")
    job_id = started["jobs"][0]["id"]
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running", what="job running")

    def ours() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]

    wait_until(lambda: len(ours()) >= 2, what="job processes")
    reply = fleet.json("cancel", started["id"])
    assert reply["cancelled"] == [job_id]
    final = wait_until(
        lambda: (j := fleet.json("status", job_id))["status"] in ("cancelled", "failed", "success") and j,
        what="cancel",
    )
    assert final["status"] == "cancelled"
    wait_until(lambda: not ours(), timeout=10, what="job processes to be gone")


def test_lost_node_mid_job_is_retried_on_another(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator("--lost-after", "2", "--unreachable-after", "1")
    fleet.start_node("doomed")
    run = fleet.json("run", "--on", "doomed", "sleep 30")
    job_id = run["jobs"][0]["id"]
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running", what="running on doomed")
    fleet.stop("doomed", signal.SIGKILL)
    wait_until(lambda: fleet.nodes()["doomed"]["state"] in ("unreachable", "lost"), what="doomed unreachable")
    wait_until(lambda: fleet.nodes()["doomed"]["state"] == "lost", what="doomed lost")
    job = fleet.json("status", job_id)
    # Pinned to a lost node: it waits rather than running somewhere it was not allowed.
    assert job["status"] == "queued"
    assert [a["status"] for a in job["attempts"]] == ["lost"]
    fleet.flota("cancel", job_id, check=True)

    fleet.start_node("spare-1")
    fleet.start_node("spare-2")
    run = fleet.json("run", "--on", "spare-1", "--retries", "0", "sleep 30")
    job_id = run["jobs"][0]["id"]
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running", what="running on spare-1")
    fleet.stop("spare-1", signal.SIGKILL)
    job = wait_until(lambda: (j := fleet.json("status", job_id))["status"] == "lost" and j, what="job lost")
    assert job["result"]["error"] == "node spare-1 was lost"

    # Unpinned, with the default retry: the job moves to a surviving node and succeeds.
    fleet.start_node("spare-3")
    gate = tmp_path / "may-end"  # the first attempt cannot end before its node is killed
    run = fleet.json("run", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo done")
    job_id = run["jobs"][0]["id"]
    first = wait_until(
        lambda: (j := fleet.json("status", job_id))["status"] == "running" and j, what="running"
    )
    victim = first["node_name"]
    fleet.stop(victim, signal.SIGKILL)
    gate.touch()
    final = wait_until(
        lambda: (j := fleet.json("status", job_id))["status"] == "success" and j, timeout=30, what="retry"
    )
    assert [a["status"] for a in final["attempts"]] == ["lost", "success"]
    assert final["attempts"][0]["node_name"] == victim
    assert final["node_name"] != victim
    assert fleet.flota("logs", job_id).stdout == "done\n"


def test_cleanup_removes_worktrees_and_keeps_branches(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo", "--slots", "2")
    work, remote = make_repo(tmp_path / "repo")
    result, run = _run(fleet, "--repo", str(work), "-t", "touch a", "-t", "touch b")
    assert result.returncode == 0, result.stderr
    worktrees = fleet.home / "nodes" / "solo" / "work" / "worktrees"
    assert len([p for p in worktrees.iterdir() if p.name.startswith(run["id"])]) == 2
    result = fleet.flota("--json", "cleanup", run["id"])
    reply = json.loads(result.stdout)  # stdout is the reply alone; progress went to stderr
    assert result.returncode == 0 and reply["worktrees_removed"] == 2
    assert f"removing worktrees of {run['id']} on solo: 2/2" in result.stderr.splitlines(), result.stderr
    assert not [p for p in worktrees.iterdir() if p.name.startswith(run["id"])]
    branches = git("branch", "--list", f"flota/{run['id']}/*", cwd=remote).split()
    assert branches == [f"flota/{run['id']}/1", f"flota/{run['id']}/2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--on", "ghost", "true"], "unknown node 'ghost'"),
        (["run", "--label", "novalue", "true"], "invalid label"),
        (["run", "--label", "k=bad value", "true"], "invalid label"),
        (["run", "--network", "Bad Net", "true"], "invalid network profile"),
        (["run", "--repo", "/nonexistent/repo", "true"], "no such directory"),
        (["run"], "nothing to run"),
        (["status", "r000000"], "no run 'r000000'"),
        (["status", "r000000.1"], "no job 'r000000.1'"),
        (["logs", "r000000.1"], "no job"),
        (["cancel", "r000000"], "no run or job"),
        (["cleanup", "r000000"], "no run"),
        (["prune", "--older-than", "30x", "--yes"], "invalid --older-than '30x'"),
        (["prune", "--older-than", "0s", "--yes"], "invalid --older-than"),
        (["prune", "--older-than", "30d"], "no terminal to ask on"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(fleet: Fleet, args: list[str], message: str) -> None:
    fleet.start_coordinator()
    result = fleet.flota(*args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_repo_problems_are_one_line(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    plain = tmp_path / "plain"
    plain.mkdir()
    result = fleet.flota("run", "--repo", str(plain), "true")
    assert (result.returncode, result.stderr.strip()) == (2, f"flota: not a git repository: {plain}")

    work, remote = make_repo(tmp_path / "repo")
    result = fleet.flota("run", "--repo", str(work), "--remote", "upstream", "true")
    assert result.returncode == 2 and "no remote 'upstream'" in result.stderr

    subprocess.run(["rm", "-rf", str(remote)], check=True)
    result = fleet.flota("run", "--repo", str(work), "true")
    assert result.returncode == 2 and "cannot push the base" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_coordinator_and_missing_credentials(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "empty")
    result = fleet.flota("nodes")
    assert result.returncode == 3 and "no admin credentials" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_join_token_and_port_in_use(fleet: Fleet) -> None:
    coord = fleet.start_coordinator()
    address, token = fleet.token()
    state = fleet.home / "nodes" / "x"
    env = fleet.env

    def join(tok: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                fleet.python,
                "-m",
                "cli",
                "node",
                "join",
                address,
                "--token",
                tok,
                "--state-dir",
                str(state),
                "--name",
                "x",
            ],
            capture_output=True,
            text=True,
            env=env,
        )

    bad = join("not-a-token")
    assert bad.returncode == 2 and "malformed join token" in bad.stderr and "Traceback" not in bad.stderr
    forged = token.split(".")
    forged[2] = "A" * len(forged[2])
    bad = join(".".join(forged))
    assert bad.returncode == 2 and "invalid or already used join token" in bad.stderr
    wrong_ca = token[:-64] + "0" * 64
    bad = join(wrong_ca)
    assert bad.returncode == 2 and "does not match the token's CA hash" in bad.stderr
    assert join(token).returncode == 0
    reused = join(token)
    assert reused.returncode == 2 and "already used" in reused.stderr

    port = coord["local"].rpartition(":")[2]
    clash = fleet.flota(
        "coordinator",
        "start",
        "--listen",
        f"127.0.0.1:{port}",
        "--no-mdns",
        env={"FLOTA_HOME": str(fleet.home / "other")},
    )
    assert clash.returncode == 2 and "cannot listen" in clash.stderr and "Traceback" not in clash.stderr
    node = subprocess.run(
        [
            fleet.python,
            "-m",
            "node_agent",
            "start",
            "--state-dir",
            str(state),
            "--listen",
            f"127.0.0.1:{port}",
            "--no-mdns",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert node.returncode == 2 and "cannot listen" in node.stderr and "Traceback" not in node.stderr


def test_node_that_never_joined_says_how_to_join(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "home")
    result = subprocess.run(
        [fleet.python, "-m", "node_agent", "start", "--state-dir", str(tmp_path / "n")],
        capture_output=True,
        text=True,
        env=fleet.env,
        timeout=30,
    )
    assert result.returncode == 2
    assert "has not joined a coordinator" in result.stderr and "flota node join" in result.stderr


def test_json_shapes_are_stable(fleet: Fleet) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    _, run = _run(fleet, "echo hi")
    assert set(run) >= {
        "id",
        "name",
        "status",
        "created_at",
        "finished_at",
        "jobs",
        "repo_url",
        "base_commit",
    }
    job = run["jobs"][0]
    assert set(job) >= {"id", "run_id", "status", "node_id", "node_name", "branch", "attempts", "result"}
    assert set(job["attempts"][0]) >= {"id", "number", "node_id", "status", "branch", "error"}
    status = fleet.json("status", run["id"])
    assert status["jobs"][0]["id"] == job["id"]
    nodes = fleet.json("nodes")
    assert set(nodes[0]) >= {"info", "state", "address", "last_seen"}
    assert set(nodes[0]["info"]) >= {"id", "name", "network", "labels", "slots", "facts", "running"}


def test_graceful_stop_shows_offline_and_restart_online(fleet: Fleet) -> None:
    fleet.start_coordinator()
    fleet.start_node("laptop")
    assert fleet.stop("laptop") == 0
    fleet.wait_node("laptop", "offline", timeout=10)
    fleet.start_node("laptop", join=False)
    assert fleet.nodes()["laptop"]["state"] == "online"
    assert fleet.flota("run", "--on", "laptop", "--follow", "true").returncode == 0


def test_long_quiet_follow_survives_keepalive(fleet: Fleet) -> None:
    """A stream that stays idle longer than several keepalive periods must not be cut
    by the server's ping policy (the client pings every 2 s)."""
    fleet.start_coordinator()
    fleet.start_node("solo")
    result = fleet.flota("run", "--follow", "sleep 14; echo woke")
    assert result.returncode == 0, result.stderr
    assert "Too many pings" not in result.stderr
    node_log = fleet.log("solo")
    assert "too_many_pings" not in node_log.lower() and "Too many pings" not in node_log


def test_stopping_a_node_retries_its_job_elsewhere(fleet: Fleet) -> None:
    """A daemon stopped by its owner did not cancel the job: it is retried, not lost."""
    fleet.start_coordinator()
    fleet.start_node("first")
    run = fleet.json("run", "--on", "first", "sleep 30")
    job_id = run["jobs"][0]["id"]
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running", what="running on first")
    fleet.start_node("second")
    assert fleet.stop("first") == 0
    job = wait_until(
        lambda: (j := fleet.json("status", job_id))["attempts"][0]["status"] != "running" and j,
        what="first attempt to end",
    )
    assert job["attempts"][0]["status"] == "lost"
    assert job["attempts"][0]["error"] == "the node daemon stopped"
    assert job["status"] == "queued"  # pinned to the stopped node: it waits for it
    fleet.flota("cancel", job_id, check=True)

    run = fleet.json("run", "sleep 3; echo moved")
    job_id = run["jobs"][0]["id"]
    first = wait_until(
        lambda: (j := fleet.json("status", job_id))["status"] == "running" and j, what="running"
    )
    fleet.start_node("first", join=False)
    fleet.stop(first["node_name"])
    final = wait_until(
        lambda: (j := fleet.json("status", job_id))["status"] == "success" and j,
        timeout=30,
        what="retried job to succeed",
    )
    assert [a["status"] for a in final["attempts"]] == ["lost", "success"]
    assert final["node_name"] != first["node_name"]


def test_killed_daemon_reattaches_to_its_running_job(fleet: Fleet) -> None:
    """The job runs in its own session with its output in the journal: a daemon killed
    mid-job leaves it running, and the restarted daemon finds it, streams the rest of its
    output and reports its one result."""
    fleet.start_coordinator("--lost-after", "30")
    fleet.start_node("crashy")
    marker = f"flota-crash-{os.getpid()}-{time.time_ns()}"
    gate = fleet.home / f"{marker}.go"
    command = f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; echo after; : {marker}"
    run = fleet.json("run", "--retries", "0", command)
    job_id = run["jobs"][0]["id"]
    wait_until(lambda: fleet.json("status", job_id)["status"] == "running", what="running")

    def ours() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]

    wait_until(ours, what="job process")
    pids = {p.pid for p in ours()}
    fleet.stop("crashy", signal.SIGKILL)
    assert {p.pid for p in ours()} == pids, "the job outlives the daemon"
    fleet.start_node("crashy", join=False)
    gate.touch()
    job = wait_until(lambda: (j := fleet.json("status", job_id))["status"] == "success" and j, what="success")
    assert [a["status"] for a in job["attempts"]] == ["success"]
    assert fleet.flota("logs", job_id).stdout == "before\nafter\n"
    wait_until(lambda: not ours(), what="the job's processes to end")


def test_user_text_prints_as_written(fleet: Fleet) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    command = "echo '[/] [bold]not bold[/bold] [a-z]'"
    result, run = _run(fleet, command)
    assert result.returncode == 0, result.stderr
    status = fleet.flota("status", run["id"], env={"COLUMNS": "200"})
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    assert "[bold]not bold[/bold]" in status.stdout
    job = fleet.flota("status", run["jobs"][0]["id"], env={"COLUMNS": "200"})
    assert job.returncode == 0 and "[a-z]" in job.stdout
    assert fleet.flota("logs", run["jobs"][0]["id"]).stdout == "[/] [bold]not bold[/bold] [a-z]\n"
    lines = fleet.flota("--json", "logs", run["jobs"][0]["id"]).stdout.splitlines()
    assert [json.loads(line)["line"] for line in lines] == ["[/] [bold]not bold[/bold] [a-z]"]


def test_chatty_jobs_keep_their_logs_or_say_what_is_missing(fleet: Fleet) -> None:
    fleet.start_coordinator()
    fleet.start_node("talker", "--slots", "2")
    result, run = _run(
        fleet, "-t", "seq 1 40000", "-t", "yes 'a fairly long line of output' | head -n 300000"
    )
    assert result.returncode == 0, result.stderr
    counted = fleet.flota("logs", run["jobs"][0]["id"]).stdout.splitlines()
    assert counted == [str(i) for i in range(1, 40001)]
    flood = fleet.flota("logs", run["jobs"][1]["id"]).stdout.splitlines()
    assert len(flood) <= 50_000
    assert flood[-1].startswith("[flota: log truncated after") or any("not delivered" in x for x in flood)
    # The flood never cost the node its session.
    assert "online -> unreachable" not in fleet.log("coordinator")


def test_cli_conveniences_and_refusals(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    result, run = _run(fleet, "sleep 0.2")
    assert result.returncode == 0
    # --json after the command works like before it.
    assert json.loads(fleet.flota("status", run["id"], "--json").stdout)["id"] == run["id"]
    job_id = run["jobs"][0]["id"]
    wrong = fleet.flota("results", job_id)
    assert wrong.returncode == 2 and f"its run is '{run['id']}'" in wrong.stderr
    running = fleet.json("run", "sleep 30")
    busy = fleet.flota("cleanup", running["id"])
    assert busy.returncode == 2 and "still running" in busy.stderr
    fleet.flota("cancel", running["id"], check=True)
    again = fleet.flota("cancel", running["id"])
    assert again.returncode == 0 and "already ended" in again.stdout
    # A second coordinator on the same state is refused, in one line.
    second = fleet.flota("coordinator", "start", "--listen", "127.0.0.1:0", "--no-mdns")
    assert second.returncode == 2 and "another coordinator already runs" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    # So is a second daemon on a node's state directory.
    state = fleet.home / "nodes" / "solo"
    twin = fleet.flota("node", "start", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--no-mdns")
    assert twin.returncode == 2 and "another node daemon already runs" in twin.stderr
    # Unreachable coordinator: exit 3, one line, no gRPC log noise.
    fleet.stop("coordinator")
    down = fleet.flota("nodes")
    assert down.returncode == 3 and len(down.stderr.strip().splitlines()) == 1, down.stderr
    join = fleet.flota(
        "node",
        "join",
        "127.0.0.1:1",
        "--token",
        "flota1.abcdef01." + "A" * 20 + "." + "0" * 64,
        "--state-dir",
        str(tmp_path / "n"),
    )
    assert join.returncode == 3 and "cannot reach" in join.stderr


def test_drain_holds_new_jobs_and_lets_running_ones_finish(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("only")
    gate = tmp_path / "gate"
    running = fleet.json("run", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo finished")["jobs"][0]["id"]
    wait_until(lambda: fleet.json("status", running)["status"] == "running", what="running")

    drained = fleet.flota("node", "drain", "only", check=True)
    assert "draining; no new jobs, 1 running job will finish" in drained.stdout, drained.stdout
    assert fleet.nodes()["only"]["state"] == "draining"
    queued = fleet.json("run", "echo later")["jobs"][0]["id"]
    wait_until(
        lambda: fleet.json("status", queued)["wait_reason"] == "every online node is draining (only)",
        what="wait reason",
    )
    gate.touch()
    wait_until(lambda: fleet.json("status", running)["status"] == "success", what="the running job finishes")
    assert fleet.json("status", queued)["status"] == "queued"

    assert fleet.json("node", "drain", "only", "--undo")["state"] == "online"
    wait_until(lambda: fleet.json("status", queued)["status"] == "success", what="the held job runs")
    missing = fleet.flota("node", "drain", "nobody")
    assert missing.returncode == 2 and missing.stderr.strip() == "flota: no node 'nobody' (see: flota nodes)"


def test_node_allow_list_refuses_other_remotes(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    fleet.start_node("picky", "--allow-remote", f"{allowed}/*.git")
    work, remote = make_repo(tmp_path / "elsewhere")
    result = fleet.flota("--json", "run", "--repo", str(work), "echo hi > a.txt", "--follow")
    assert result.returncode == 1
    job = json.loads(result.stdout)["jobs"][0]
    assert job["result"]["error"] == f"remote {remote} is not on this node's allow-list ({allowed}/*.git)"
    assert not (fleet.home / "nodes" / "picky" / "work" / "mirrors").exists() or not any(
        (fleet.home / "nodes" / "picky" / "work" / "mirrors").iterdir()
    )

    ok_work, ok_remote = make_repo(allowed / "x")
    ok_remote.rename(allowed / "ok.git")  # under the allowed glob
    git("remote", "set-url", "origin", str(allowed / "ok.git"), cwd=ok_work)
    ok = fleet.flota("--json", "run", "--repo", str(ok_work), "echo hi > a.txt", "--follow")
    assert ok.returncode == 0, ok.stdout + ok.stderr
