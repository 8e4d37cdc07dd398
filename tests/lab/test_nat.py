"""A node behind NAT (issue 15): its own network, routed to the coordinator's through a
NAT host (nftables masquerade, forwarding only what the inside opened), so the
coordinator cannot open a connection to it while it can reach the coordinator.

The node is started plainly (no --dial-home): it registers, the coordinator's dials
fail, and it dials home by itself. Then, as for a node the coordinator dials: jobs run
there and push, cancel works, a cut link makes it unreachable then lost and its job is
retried on another node, and its own late result is recorded once the link heals.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fleet import Fleet, git, make_repo
from tests.lab.netlab import Host, Lab
from tests.lab.test_faults import branches, final, remote_file
from tests.lab.test_multihost import job_if, node_state, poll

pytestmark = pytest.mark.lab

PORT = 7370
DNS = "198.51.100.53"  # TEST-NET-2: the laptop's name server, which never answers


@dataclass
class Cafe:
    fleet: Fleet
    ws: Host  # the coordinator, on the "wan" network
    nat: Host  # the café's router: wan and cafe
    laptop: Host  # behind it, on "cafe" only
    desk: Host  # another node on wan, which the coordinator dials

    def node(self, host: Host, *args: str) -> subprocess.Popen[bytes]:
        return self.fleet.start_node(
            host.name,
            "--no-mdns",
            *args,
            listen="0.0.0.0:0",
            prefix=host.command([]),
            state=host.dir / "node",
        )


def _nft() -> str:
    found = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if Path(p).exists()), None)
    if found is None:
        pytest.fail("nft not found: install nftables (scripts/test does)", pytrace=False)
    return found


@pytest.fixture
def cafe(lab: Lab) -> Iterator[Cafe]:
    wan, inside = lab.add_network("wan"), lab.add_network("cafe")
    ws = lab.add_host("ws", [wan])
    nat = lab.add_host("nat", [wan, inside])
    laptop = lab.add_host("laptop", [inside])
    desk = lab.add_host("desk", [wan])
    # The router: forwards what the inside opens, masquerades it as its own wan address,
    # and drops every new connection from outside (a home or café router's default).
    nat.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    out, into = nat.interface(wan), nat.interface(inside)
    rules = f"""
table ip cafe {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{out}" masquerade
  }}
  counter dns {{ }}
  chain prerouting {{
    type filter hook prerouting priority raw; policy accept;
    ip daddr {DNS} counter name "dns" drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "{into}" oifname "{out}" accept
  }}
}}
"""
    nat.run([_nft(), "-f", "-"], input=rules)
    laptop.run(["ip", "route", "add", "default", "via", nat.address(inside)])
    # The laptop's name server (ip netns exec mounts /etc/netns/NS/resolv.conf on
    # /etc/resolv.conf) is beyond the router, which drops what goes to it (a DNS server
    # that does not answer, as on a captive or broken network): a lookup there waits for
    # the resolver's timeouts. No job step may look up a name (the counter says whether
    # one tried).
    etc = Path("/etc/netns") / laptop.ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {DNS}\n")
    fleet = Fleet(ws.dir / "home", cli_prefix=ws.command([]))
    try:
        yield Cafe(fleet, ws, nat, laptop, desk)
    finally:
        fleet.close()
        shutil.rmtree(etc, ignore_errors=True)


def _dns_dropped(cafe: Cafe) -> int:
    """Packets the router dropped on their way to the laptop's name server."""
    out = cafe.nat.run([_nft(), "list", "counter", "ip", "cafe", "dns"]).stdout
    found = re.search(r"packets (\d+)", out)
    assert found, out
    return int(found.group(1))


def _connects(host: Host, address: str, port: int) -> bool:
    probe = (
        "import socket, sys\n"
        "s = socket.socket(); s.settimeout(1.5)\n"
        f"sys.exit(0 if s.connect_ex(({address!r}, {port})) == 0 else 1)\n"
    )
    return host.run(["python3", "-c", probe], check=False).returncode == 0


def test_a_node_behind_nat_dials_home_and_behaves_as_a_direct_node(cafe: Cafe, tmp_path: Path) -> None:
    fleet = cafe.fleet
    fleet.start_coordinator(
        "--advertise",
        cafe.ws.address(),
        "--unreachable-after",
        "1",
        "--lost-after",
        "3",
        listen=f"0.0.0.0:{PORT}",
        prefix=cafe.ws.command([]),
    )
    cafe.node(cafe.desk)
    cafe.node(cafe.laptop)  # online only by dialing home: nobody can dial it

    # The NAT is real: the laptop reaches the coordinator; the coordinator, not the laptop.
    laptop_port = int(poll(lambda: _port(cafe.laptop), what="laptop port")[1])
    assert _connects(cafe.laptop, cafe.ws.address(), PORT)
    assert not _connects(cafe.ws, cafe.laptop.address(), laptop_port)
    assert not _connects(cafe.ws, cafe.nat.address("wan"), laptop_port)
    nodes = fleet.nodes()
    assert nodes["laptop"]["link"] == "home", nodes["laptop"]
    assert nodes["laptop"]["address"].startswith(f"{cafe.nat.address('wan')}:")  # through the NAT
    assert nodes["desk"]["link"] == "dialed", nodes["desk"]
    assert "dialing home" in fleet.log("laptop")

    # A job runs behind the NAT and pushes its branch.
    work, remote = make_repo(tmp_path / "repo")
    run = fleet.json("run", "--repo", str(work), "--on", "laptop", 'echo "$FLOTA_NODE_NAME" > who.txt')
    job = final(fleet, run["jobs"][0]["id"])
    assert (job["status"], job["node_name"]) == ("success", "laptop"), job
    assert remote_file(remote, job["branch"], "who.txt") == "laptop\n"
    assert _dns_dropped(cafe) == 0, "a step of the job looked a name up"

    # Cancel reaches it.
    job_id = fleet.json("run", "--on", "laptop", "sleep 300")["jobs"][0]["id"]
    poll(lambda: job_if(fleet, job_id, "running"), what="sleep running on laptop")
    fleet.flota("cancel", job_id, check=True)
    assert final(fleet, job_id)["status"] == "cancelled"

    # The café's uplink drops mid-job: unreachable, lost, retried on desk; healed, the
    # laptop dials home again and its own result is recorded, late (superseded).
    fleet.flota("node", "drain", "desk", check=True)  # the job must start behind the NAT
    gate = tmp_path / "gate"
    command = f'echo "$FLOTA_NODE_NAME" > who.txt; while [ ! -e {gate} ]; do sleep 0.05; done; echo done'
    job_id = fleet.json("run", "--repo", str(work), "--retries", "1", command)["jobs"][0]["id"]
    poll(lambda: (j := job_if(fleet, job_id, "running")) and j["node_name"] == "laptop", what="on laptop")
    fleet.flota("node", "drain", "desk", "--undo", check=True)
    cafe.nat.link_down("wan")
    try:
        poll(lambda: node_state(fleet, "laptop", "unreachable", "lost"), what="laptop unreachable")
        poll(lambda: node_state(fleet, "laptop", "lost"), what="laptop lost")
        poll(
            lambda: (j := job_if(fleet, job_id, "running")) and j["node_name"] == "desk", what="retry on desk"
        )
        gate.touch()
        job = final(fleet, job_id)
        assert (job["status"], job["node_name"]) == ("success", "desk"), job
    finally:
        cafe.nat.link_up("wan")
    poll(lambda: node_state(fleet, "laptop", "online"), timeout=40, what="laptop back online")
    assert fleet.nodes()["laptop"]["link"] == "home"

    def recorded() -> dict[str, Any] | None:
        j: dict[str, Any] = fleet.json("status", job_id)
        return j if j["attempts"][0]["status"] == "superseded" else None

    _, job = poll(recorded, what="the late result recorded as superseded")
    first, retry = job["attempts"]
    assert (first["node_name"], retry["node_name"]) == ("laptop", "desk")
    assert (job["status"], job["branch"]) == ("success", retry["branch"])
    assert branches(remote) >= {first["branch"], retry["branch"]}
    assert remote_file(remote, first["branch"], "who.txt") == "laptop\n"
    assert remote_file(remote, retry["branch"], "who.txt") == "desk\n"
    assert git("--git-dir", str(remote), "rev-parse", first["branch"]).strip()  # its work is kept

    # No step of those jobs looked a name up (git's default identity did: the host's FQDN,
    # 10-20 s per command here); and the counter counts what the laptop sends there.
    assert _dns_dropped(cafe) == 0
    send = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'?', ({DNS!r}, 53))"
    cafe.laptop.run(["python3", "-c", send])
    poll(lambda: _dns_dropped(cafe), what="the probe counted")  # it may wait for ARP
    assert _dns_dropped(cafe) == 1


def _port(host: Host) -> int | None:
    import json

    try:
        return int(json.loads((host.dir / "node" / "daemon.json").read_text())["port"])
    except (OSError, ValueError, KeyError):
        return None
