"""Multi-host end to end: a coordinator and node daemons on separate lab hosts (network
namespaces joined by a bridge), with mDNS on, real mutual TLS, driven through the CLI
run inside the coordinator's host.

Timings are printed (``pytest -s`` shows them), measured two ways: when the CLI, polling,
first saw the change, and when the coordinator logged the state change (asctime, ms).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fleet import Fleet
from tests.lab.netlab import Host, Lab

pytestmark = pytest.mark.lab

DEADLINE_S = 25.0


@dataclass
class Site:
    """One lab network "lan" with the coordinator's host "ws" and two node hosts."""

    lab: Lab
    fleet: Fleet
    ws: Host
    hosts: dict[str, Host]

    def start_coordinator(self, *args: str) -> dict[str, Any]:
        coord = self.fleet.start_coordinator(
            "--advertise", self.ws.address(), *args, listen="0.0.0.0:0", prefix=self.ws.command([]), mdns=True
        )
        assert coord["join"].startswith(f"{self.ws.address()}:"), coord
        assert coord["api"].startswith(f"{self.ws.address()}:"), coord
        return coord

    def state_dir(self, name: str) -> Path:
        return self.hosts[name].dir / "node"

    def join(self, name: str) -> Path:
        host = self.hosts[name]
        return self.fleet.join(name, prefix=host.command([]), state=self.state_dir(name))

    def start_node(
        self, name: str, *args: str, join: bool = True, wait: bool = True
    ) -> subprocess.Popen[bytes]:
        host = self.hosts[name]
        return self.fleet.start_node(
            name,
            *args,
            join=join,
            wait=wait,
            listen="0.0.0.0:0",
            prefix=host.command([]),
            mdns=True,
            state=self.state_dir(name),
        )

    def node_port(self, name: str) -> int:
        """The port the node daemon bound (it writes daemon.json once it listens)."""

        def read() -> int | None:
            try:
                return int(json.loads((self.state_dir(name) / "daemon.json").read_text())["port"])
            except (OSError, ValueError, KeyError):
                return None

        return poll(read, what=f"{name} daemon.json")[1]


@pytest.fixture
def site(lab: Lab) -> Iterator[Site]:
    lan = lab.add_network("lan")
    ws = lab.add_host("ws", [lan])
    hosts = {name: lab.add_host(name, [lan]) for name in ("laptop", "desktop")}
    fleet = Fleet(ws.dir / "home", cli_prefix=ws.command([]))
    try:
        yield Site(lab, fleet, ws, hosts)
    finally:
        fleet.close()  # graceful stops first; the lab then kills whatever is left


def poll(check: Callable[[], Any], timeout: float = DEADLINE_S, what: str = "condition") -> tuple[float, Any]:
    """Poll until ``check`` is truthy; return (wall time it was first seen, its value)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return time.time(), last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def node_state(fleet: Fleet, name: str, *states: str) -> dict[str, Any] | None:
    node = fleet.nodes().get(name)
    return node if node is not None and node["state"] in states else None


FINAL = ("success", "partial", "failed", "timeout", "cancelled", "lost")


def job_if(fleet: Fleet, job_id: str, *statuses: str) -> dict[str, Any] | None:
    job: dict[str, Any] = fleet.json("status", job_id)
    return job if job["status"] in statuses else None


def final_time(job: dict[str, Any]) -> float | None:
    finished = (job.get("result") or {}).get("finished_at")
    return float(finished) if finished else None


_TRANSITION = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) flota\.coordinator INFO node (\S+) \(\w+\): (\w+) -> (\w+)$"
)


def transitions(fleet: Fleet, name: str) -> list[tuple[float, str, str]]:
    """(wall time, old, new) for each state change the coordinator logged for ``name``."""
    found = []
    for line in fleet.log("coordinator").splitlines():
        m = _TRANSITION.match(line)
        if m and m.group(2) == name:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((when, m.group(3), m.group(4)))
    return found


def logged(fleet: Fleet, name: str, new: str, after: float) -> float | None:
    """When the coordinator logged ``name`` entering ``new`` (first time after ``after``)."""
    # asctime has ms resolution and is truncated: allow 1 ms of slack.
    return next((t for t, _, state in transitions(fleet, name) if state == new and t >= after - 0.001), None)


def fmt(start: float, end: float | None) -> str:
    return "n/a" if end is None else f"{end - start:.2f}s"


def run_follow(fleet: Fleet, *args: str) -> dict[str, Any]:
    result = fleet.flota("--json", "run", *args, "--follow")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- tests


def test_discovery_over_mdns_across_the_bridge(site: Site) -> None:
    fleet = site.fleet
    site.start_coordinator()
    networks = {"laptop": "home", "desktop": "vpn"}
    for name in networks:
        state = site.join(name)
        # Point the node's own registration at nothing: RegisterNode now fails (the node
        # keeps retrying), so the coordinator can only learn where it is from mDNS.
        (state / "identity" / "coordinator").write_text("127.0.0.1:9")

    started = {}
    for name, network in networks.items():
        started[name] = time.time()
        site.start_node(name, "--network", network, join=False, wait=False)

    online: dict[str, float] = {}

    def both_online() -> bool:
        for name in networks:
            assert fleet.procs[name].poll() is None, fleet.log(name)
        nodes = fleet.nodes()
        for name in networks:
            if name not in online and nodes.get(name, {}).get("state") == "online":
                online[name] = time.time()
        return len(online) == len(networks)

    poll(both_online, what="both nodes online through mDNS")
    nodes = fleet.nodes()
    for name, network in networks.items():
        host, node = site.hosts[name], nodes[name]
        assert node["address"] == f"{host.address()}:{site.node_port(name)}", node
        assert node["info"]["network"] == network
        assert node["info"]["network_source"] == "declared"
        # The proof that registration played no part: it never succeeded.
        log = fleet.log(name)
        assert "cannot register with coordinator 127.0.0.1:9" in log, log
        assert "registered with coordinator" not in log, log
        print(
            f"\n[mdns] {name}: start -> online {fmt(started[name], online[name])} (CLI), "
            f"{fmt(started[name], logged(fleet, name, 'online', started[name]))} (coordinator log)"
        )

    run = run_follow(fleet, "--network", "vpn", "hostname; echo ok")
    assert run["status"] == "success"
    job = run["jobs"][0]
    assert job["node_name"] == "desktop"
    assert [a["node_name"] for a in job["attempts"]] == ["desktop"]
    assert job["result"]["status"] == "success"
    assert fleet.flota("logs", job["id"], check=True).stdout == "desktop\nok\n"


def test_network_profile_change_reaches_the_coordinator(site: Site) -> None:
    fleet = site.fleet
    laptop = site.hosts["laptop"]
    site.start_coordinator()
    site.start_node("laptop", "--network-rule", "vpn=if:wg*")
    info = fleet.nodes()["laptop"]["info"]
    assert (info["network"], info["network_source"]) == ("lan", "auto")

    # A job for the VPN waits, and says why, while no node is on it.
    submitted = fleet.json("run", "--network", "vpn", "hostname; echo via-vpn")
    job_id = submitted["jobs"][0]["id"]
    poll(lambda: "no node on network vpn" in fleet.json("status", job_id)["wait_reason"], what="wait reason")
    assert fleet.json("status", job_id)["status"] == "queued"

    def profile(network: str, source: str) -> bool:
        node = fleet.nodes()["laptop"]
        info = node["info"]
        return node["state"] == "online" and (info["network"], info["network_source"]) == (network, source)

    t_up = time.time()
    kind = laptop.add_dummy("wg0", "10.99.0.2/24")
    seen, _ = poll(lambda: profile("vpn", "rule:1"), what="coordinator to see network vpn")
    print(f"\n[profile] wg0 ({kind}) up -> coordinator sees vpn: {fmt(t_up, seen)} (CLI; node looks each 2s)")

    _, final = poll(lambda: job_if(fleet, job_id, *FINAL), what="the vpn job to finish")
    assert final["status"] == "success", final
    assert final["node_name"] == "laptop"
    assert fleet.flota("logs", job_id, check=True).stdout == "laptop\nvia-vpn\n"
    print(f"[profile] queued vpn job ran and finished {fmt(t_up, final_time(final))} after wg0 came up")

    t_down = time.time()
    laptop.remove_interface("wg0")
    seen, _ = poll(lambda: profile("lan", "auto"), what="coordinator to see network lan again")
    print(f"[profile] wg0 removed -> coordinator sees lan: {fmt(t_down, seen)} (CLI)")


def test_cut_link_marks_node_unreachable_and_job_moves(site: Site) -> None:
    fleet = site.fleet
    site.start_coordinator("--unreachable-after", "1", "--lost-after", "3")
    site.start_node("laptop")
    site.start_node("desktop")

    submitted = fleet.json("run", "sleep 3; echo done")
    job_id = submitted["jobs"][0]["id"]
    _, first = poll(lambda: job_if(fleet, job_id, "running"), what="job running")
    victim = first["node_name"]
    (survivor,) = set(site.hosts) - {victim}

    t_cut = time.time()
    site.hosts[victim].link_down()
    # "lost" too: a slow poll may miss the 2 s of "unreachable" (the log below checks the order).
    t_unreachable, _ = poll(lambda: node_state(fleet, victim, "unreachable", "lost"), what="unreachable")
    t_lost, _ = poll(lambda: node_state(fleet, victim, "lost"), what=f"{victim} lost")
    assert node_state(fleet, survivor, "online"), fleet.nodes()
    states = [new for t, _, new in transitions(fleet, victim) if t >= t_cut - 0.001]
    assert states[:2] == ["unreachable", "lost"], transitions(fleet, victim)
    print(
        f"\n[cut] {victim}: link cut -> unreachable {fmt(t_cut, t_unreachable)} (CLI), "
        f"{fmt(t_cut, logged(fleet, victim, 'unreachable', t_cut))} (coordinator log); "
        f"-> lost {fmt(t_cut, t_lost)} (CLI), "
        f"{fmt(t_cut, logged(fleet, victim, 'lost', t_cut))} (coordinator log)"
    )

    _, final = poll(lambda: job_if(fleet, job_id, *FINAL), what="the job to finish after the retry")
    assert final["status"] == "success", final
    assert [a["status"] for a in final["attempts"]] == ["lost", "success"], final["attempts"]
    assert [a["node_name"] for a in final["attempts"]] == [victim, survivor]
    assert final["node_name"] == survivor
    assert final["attempts"][0]["error"] == f"node {victim} was lost"
    assert fleet.flota("logs", job_id, check=True).stdout == "done\n"
    print(f"[cut] job moved to {survivor} and finished {fmt(t_cut, final_time(final))} after the cut")

    t_up = time.time()
    site.hosts[victim].link_up()
    t_back, _ = poll(lambda: node_state(fleet, victim, "online"), what=f"{victim} online again")
    print(
        f"[cut] {victim}: link up -> online {fmt(t_up, t_back)} (CLI), "
        f"{fmt(t_up, logged(fleet, victim, 'online', t_up))} (coordinator log)"
    )
