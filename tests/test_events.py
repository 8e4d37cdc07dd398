"""`flota events` and StreamEvents against a real coordinator and node (issue 16: one
event stream first): the snapshot, live events in order, resuming from an index, topics,
a coordinator restart."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from cli.client import admin_credentials
from protos.channels import client_options
from protos.contract import COORDINATOR_SERVER_NAME, RUN_ACTIVE
from protos.flota.v1 import coordinator_pb2 as pb
from protos.flota.v1 import coordinator_pb2_grpc
from tests.fleet import Fleet, wait_until

pytestmark = pytest.mark.timeout(180)


class Events:
    """`flota --json events ARGS` running, its NDJSON lines read as they come."""

    def __init__(self, fleet: Fleet, *args: str) -> None:
        self.proc = subprocess.Popen(
            [fleet.python, "-m", "cli", "--json", "events", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=fleet.env,
            cwd=fleet.home,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def until(self, check: Any, timeout: float = 30.0, what: str = "event") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
                continue
            self.seen.append(event)
            if check(event):
                return event
        raise AssertionError(f"no {what} within {timeout}s; saw {[e['type'] for e in self.seen]}")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.proc.stderr.read() if self.proc.stderr else ""


def _of(kind: str, ident: str = "") -> Any:
    def check(e: dict[str, Any]) -> bool:
        if e["type"] != kind:
            return False
        subject = e.get("job") or e.get("run") or (e.get("node") or {}).get("info") or {}
        return not ident or subject.get("id") == ident or subject.get("name") == ident

    return check


def test_snapshot_then_every_change_in_order(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    wait_until(lambda: fleet.json("nodes")[0]["state"] == "online", what="node online")
    stream = Events(fleet)
    try:
        stream.until(_of("resync"))
        node = stream.until(_of("node.snapshot", "solo"))
        assert node["node"]["state"] == "online"
        live = stream.until(_of("live"))
        run = fleet.json("run", "echo hello")
        stream.until(_of("run.created", run["id"]))
        job_id = run["jobs"][0]["id"]
        ended = stream.until(_of("run.ended", run["id"]))
        assert ended["run"]["status"] == "success"
        after = stream.seen[stream.seen.index(live) + 1 :]
        statuses = [e["job"]["status"] for e in after if e.get("job", {}).get("id") == job_id]
        assert statuses[0] == "queued" and statuses[-1] == "success", statuses
        assert "running" in statuses or "dispatching" in statuses, statuses
        indexes = [e["index"] for e in after]
        assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
        assert all(i > live["index"] for i in indexes)

        fleet.flota("node", "drain", "solo", check=True)  # (its slots in use changed before: updates too)
        drained = stream.until(lambda e: _of("node.updated", "solo")(e) and e["node"]["state"] == "draining")
        assert drained["index"] > ended["index"]
    finally:
        stream.stop()


def test_resume_from_an_index_gives_what_was_missed_once(fleet: Fleet) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    first = Events(fleet, "--topic", "job", "--topic", "run")
    first.until(_of("live"))
    one = fleet.json("run", "echo one")
    last = first.until(_of("run.ended", one["id"]))
    first.stop()  # gone for a while: another run happens meanwhile
    two = fleet.json("run", "-t", "echo two", "-t", "echo three")
    wait_until(lambda: fleet.json("status", two["id"])["status"] == "success", what="second run")

    again = Events(fleet, "--since", str(last["index"]), "--topic", "job", "--topic", "run")
    try:
        ended = again.until(_of("run.ended", two["id"]))
        missed = again.seen
        assert missed[0]["type"] == "run.created" and missed[0]["run"]["id"] == two["id"]
        assert "resync" not in [e["type"] for e in missed]  # replayed, not resynced
        assert [e["index"] for e in missed] == sorted({e["index"] for e in missed})
        assert missed[0]["index"] == last["index"] + 1 or all(e["index"] > last["index"] for e in missed)
        done = {e["job"]["id"] for e in missed if e["type"] == "job.success"}
        assert done == {f"{two['id']}.1", f"{two['id']}.2"}
        assert ended is missed[-1]
    finally:
        again.stop()


def test_topics_narrow_the_stream(fleet: Fleet) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    mine = fleet.json("run", "--cpus", "999", "echo mine")  # waits: its job is in the snapshot
    stream = Events(fleet, "--topic", f"job:{mine['id']}")
    try:
        snapshot = stream.until(_of("job.snapshot", f"{mine['id']}.1"))
        assert snapshot["job"]["status"] == "queued"
        stream.until(_of("live"))
        fleet.flota("cancel", mine["id"], check=True)
        mark = stream.until(_of("job.cancelled", f"{mine['id']}.1"))["index"]
        stream.stop()
        other = fleet.json("run", "sleep 0.3")
        mine = fleet.json("run", "sleep 0.3")
        stream = Events(fleet, "--since", str(mark), "--topic", f"job:{mine['id']}")
        stream.until(_of("job.success", f"{mine['id']}.1"), what="my job's end")
        wait_until(lambda: fleet.json("status", other["id"])["status"] == "success", what="other run")
        time.sleep(0.5)
        while not stream.lines.empty():
            stream.seen.append(stream.lines.get())
        subjects = {(e.get("job") or {}).get("run_id") for e in stream.seen if "job" in e}
        assert subjects == {mine["id"]}, stream.seen
        assert not any("node" in e or "run" in e for e in stream.seen)
    finally:
        stream.stop()
    bad = fleet.flota("events", "--topic", "jobs")
    assert bad.returncode == 2 and bad.stderr.startswith("flota: invalid topic 'jobs'"), bad.stderr


def test_a_restarted_coordinator_resyncs_the_reader(fleet: Fleet) -> None:
    api = fleet.start_coordinator()["api"]
    fleet.start_node("solo")
    stream = Events(fleet)
    try:
        stream.until(_of("live"))
        fleet.stop("coordinator")
        time.sleep(1)  # the reader notices, says so, and tries again
        fleet.start_coordinator(listen=api)  # same state: the reader reconnects by itself
        resync = stream.until(_of("resync"), timeout=40)
        assert resync["index"] > stream.seen[0]["index"]  # indexes grow across restarts
        stream.until(_of("live"))
        run = fleet.json("run", "echo after")
        stream.until(_of("run.ended", run["id"]))
    finally:
        err = stream.stop()
    assert "reconnecting" in err


def test_a_retry_is_in_the_stream(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_coordinator()
    fleet.start_node("solo")
    marker = tmp_path / "second-time"
    run = fleet.json("run", f"test -e {marker} || {{ touch {marker}; exit 3; }}")
    wait_until(lambda: fleet.json("status", run["id"])["status"] == "failed", what="first attempt fails")
    stream = Events(fleet, "--topic", f"run:{run['id']}", "--topic", f"job:{run['id']}")
    try:
        stream.until(_of("live"))
        fleet.flota("retry", run["id"], check=True)
        again = stream.until(_of("run.updated", run["id"]))
        assert again["run"]["status"] in RUN_ACTIVE
        stream.until(_of("job.queued", f"{run['id']}.1"))
        ended = stream.until(_of("run.ended", run["id"]))
        assert ended["run"]["status"] == "success"
    finally:
        stream.stop()


def test_the_wire_plain_events_or_batches_as_the_reader_asks(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator sends the bytes it serialized once: a generated stub that does not ask
    for batches decodes plain Events; one that asks gets a burst as "batch" envelopes holding
    the same events, in the same order."""
    fleet.start_coordinator()
    fleet.start_node("solo", "--slots", "4")
    monkeypatch.setenv("FLOTA_HOME", str(fleet.home))
    address, creds = admin_credentials()
    channel = grpc.secure_channel(address, creds, options=client_options(COORDINATOR_SERVER_NAME))
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    got: dict[bool, list[pb.Event]] = {False: [], True: []}
    done = {False: threading.Event(), True: threading.Event()}
    calls = {
        b: stub.StreamEvents(pb.StreamEventsRequest(topics=["run", "job"], batch=b)) for b in (False, True)
    }

    def read(batched: bool) -> None:
        for message in calls[batched]:
            got[batched].append(message)
            if message.type == "run.ended" or any(e.type == "run.ended" for e in message.batch):
                done[batched].set()
                return

    try:
        for batched in (False, True):
            threading.Thread(target=read, args=(batched,), daemon=True).start()
        wait_until(lambda: all(any(m.type in ("live", "batch") for m in got[b]) for b in got), what="live")
        fleet.json("run", *[a for i in range(30) for a in ("-t", f"echo {i}")])
        assert done[False].wait(60) and done[True].wait(60)
    finally:
        for call in calls.values():
            call.cancel()
        channel.close()
    plain, batches = got[False], got[True]
    assert all(m.type != "batch" and not m.batch for m in plain)
    assert any(m.type == "batch" and len(m.batch) > 1 for m in batches)  # the run's 30 queued jobs at least
    opened = [e for m in batches for e in (m.batch if m.type == "batch" else [m])]
    assert [(e.index, e.type) for e in opened] == [(e.index, e.type) for e in plain]
    assert opened[-1] == plain[-1] and opened[-1].run.status == "success"
    assert {e.job.id for e in plain if e.type == "job.success"} == {
        f"{plain[-1].run.id}.{i}" for i in range(1, 31)
    }


def test_a_fresh_readers_snapshot_has_the_jobs_of_recently_ended_runs(fleet: Fleet) -> None:
    """After a resync, `flota top` and the dashboard see what a reader that was there all
    along saw: the jobs of the latest ended runs too, in their last state."""
    fleet.start_coordinator()
    fleet.start_node("solo")
    along = Events(fleet, "--topic", "job", "--topic", "run")
    try:
        along.until(_of("live"))
        runs = [fleet.json("run", "-t", "echo a", "-t", "exit 3"), fleet.json("run", "echo b")]
        for run in runs:
            along.until(_of("run.ended", run["id"]))
    finally:
        along.stop()
    last = {e["job"]["id"]: e["job"] for e in along.seen if "job" in e}
    assert {j["status"] for j in last.values()} == {"success", "failed"}
    fresh = fleet.flota("--json", "events", "--snapshot", check=True)
    snapshot = [json.loads(line) for line in fresh.stdout.splitlines()]
    jobs = {e["job"]["id"]: e["job"] for e in snapshot if e["type"] == "job.snapshot"}
    assert jobs == last
