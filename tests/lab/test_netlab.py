"""The lab itself: real namespaces, real processes, real mDNS."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.lab.netlab import MARKER_DIR, Host, Lab, LabError, LineTail, cleanup_stale, wait_until

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("listening", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"hello from {socket.gethostname()} to {peer[0]}\n".encode())
    c.close()
"""

CLIENT = r"""
import socket, sys, time
t = time.monotonic()
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
        print("ok", c.recv(200).decode().strip())
except OSError as e:
    print("err", type(e).__name__, e.errno, f"{time.monotonic() - t:.2f}")
"""

REGISTER = r"""
import json, socket, sys, time
from zeroconf import InterfaceChoice, ServiceInfo, Zeroconf
addr, choice = sys.argv[1], sys.argv[2]
zc = Zeroconf(interfaces=InterfaceChoice.All if choice == "all" else InterfaceChoice.Default)
info = ServiceInfo("_flotatest._tcp.local.", f"{socket.gethostname()}._flotatest._tcp.local.",
                   addresses=[socket.inet_aton(addr)], port=7000, properties={"id": "abc"},
                   server=f"{socket.gethostname()}.local.")
t0 = time.monotonic()
zc.register_service(info)
print(json.dumps({"registering": t0, "registered": time.monotonic()}), flush=True)
time.sleep(3600)
"""

BROWSE = r"""
import json, sys, time
from zeroconf import InterfaceChoice, ServiceBrowser, ServiceListener, Zeroconf
choice = sys.argv[1]
zc = Zeroconf(interfaces=InterfaceChoice.All if choice == "all" else InterfaceChoice.Default)
class L(ServiceListener):
    def add_service(self, zc, type_, name):
        info = zc.get_service_info(type_, name, timeout=3000)
        if info is None:
            return
        print(json.dumps({"found": time.monotonic(), "name": name, "server": info.server,
                          "addresses": info.parsed_addresses(),
                          "txt": {k.decode(): (v or b"").decode() for k, v in info.properties.items()}}),
              flush=True)
    def update_service(self, zc, type_, name):
        pass
    def remove_service(self, zc, type_, name):
        print(json.dumps({"removed": name}), flush=True)
ServiceBrowser(zc, "_flotatest._tcp.local.", L())
print(json.dumps({"browsing": time.monotonic()}), flush=True)
time.sleep(3600)
"""


def start_server(host: Host, port: int = 7000) -> subprocess.Popen[str]:
    proc = host.popen([PY, "-c", SERVER, host.address(), str(port)], stdout=subprocess.PIPE, text=True)
    LineTail(proc.stdout).wait_for("listening", timeout=10)
    return proc


def connect(client: Host, addr: str, port: int = 7000, timeout: float = 1.0) -> str:
    return client.run([PY, "-c", CLIENT, addr, str(port), str(timeout)], timeout=timeout + 10).stdout.strip()


def test_reachability_within_and_across_networks(lab: Lab) -> None:
    lan, other = lab.add_network("lan"), lab.add_network("other")
    t0 = time.perf_counter()
    a = lab.add_host("alpha", [lan])
    b = lab.add_host("beta", [lan])
    c = lab.add_host("gamma", [other])
    d = lab.add_host("delta", [lan, other])
    print(f"\nsetup of 4 hosts: {time.perf_counter() - t0:.3f}s; timings {lab.timings}")

    assert a.interface() == "eth0" and d.interface(other) == "eth1"
    assert a.address() != b.address()
    assert a.address().startswith("10.201.1.") and c.address().startswith("10.201.2.")
    assert "default" not in a.run(["ip", "route"]).stdout  # nothing routed to the real world

    start_server(a)
    assert connect(b, a.address()) == f"ok hello from alpha to {b.address()}"  # own hostname
    assert connect(d, a.address()) == f"ok hello from alpha to {d.address(lan)}"  # dual-homed host
    out = connect(c, a.address())  # other network: no route at all
    assert out.startswith("err") and " 101 " in f" {out} ", out  # ENETUNREACH


@pytest.mark.parametrize("choice", ["all", "default"])
def test_mdns_across_the_bridge(lab: Lab, choice: str) -> None:
    """zeroconf works between hosts; `default` (one 0.0.0.0 socket, no IP_MULTICAST_IF) needs
    the lab's 224.0.0.0/4 route."""
    lan = lab.add_network("lan")
    a = lab.add_host("alpha", [lan])
    b = lab.add_host("beta", [lan])

    browser = b.popen([PY, "-c", BROWSE, choice], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    btail = LineTail(browser.stdout)
    btail.wait_for('"browsing"', timeout=15)
    reg = a.popen(
        [PY, "-c", REGISTER, a.address(), choice], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    rtail = LineTail(reg.stdout)

    found = json.loads(btail.wait_for('"found"', timeout=15))
    registered = json.loads(rtail.wait_for('"registered"', timeout=15))
    assert found["addresses"] == [a.address()]
    assert found["txt"] == {"id": "abc"}
    assert found["server"] == "alpha.local."
    seen_after = found["found"] - registered["registering"]
    print(
        f"\nmDNS ({choice}): beta saw alpha's service {seen_after:.3f}s after register_service() "
        f"was called (register_service itself took "
        f"{registered['registered'] - registered['registering']:.3f}s)"
    )
    assert seen_after < 10


def test_link_down_cuts_and_link_up_restores(lab: Lab) -> None:
    lan = lab.add_network("lan")
    a = lab.add_host("alpha", [lan])
    b = lab.add_host("beta", [lan])
    start_server(a)
    assert connect(b, a.address()).startswith("ok")

    a.link_down()
    assert "state DOWN" in a.run(["ip", "link", "show", "eth0"]).stdout
    assert "224.0.0.0/4" not in a.run(["ip", "route"]).stdout
    t = time.monotonic()
    out = connect(b, a.address(), timeout=1.0)
    assert out.startswith("err"), out
    print(f"\nafter link_down, connect failed in {time.monotonic() - t:.3f}s (incl. python start): {out}")
    assert time.monotonic() - t < 3

    a.link_up()
    assert "224.0.0.0/4 dev eth0" in a.run(["ip", "route"]).stdout  # restored with the link
    t = time.monotonic()
    out = wait_until(
        lambda: (o := connect(b, a.address(), timeout=0.5)).startswith("ok") and o,
        timeout=10,
        what="reconnect after link_up",
    )
    print(f"\nreconnected {time.monotonic() - t:.3f}s after link_up: {out}")


def test_dummy_interface_appears_and_disappears(lab: Lab) -> None:
    lan = lab.add_network("lan")
    a = lab.add_host("alpha", [lan])
    b = lab.add_host("beta", [lan])

    kind = a.add_dummy("wg0", "10.99.0.2/24")
    print(f"\nadd_dummy used a {kind!r} link")
    addrs = a.run(["ip", "-o", "addr"]).stdout
    assert "wg0" in addrs and "10.99.0.2/24" in addrs
    assert "wg0" in a.run(["ls", "/sys/class/net"]).stdout.split()  # /sys is the host's view
    psutil_view = a.run([PY, "-c", "import psutil; print(sorted(psutil.net_if_addrs()))"]).stdout
    assert "'wg0'" in psutil_view and "'eth0'" in psutil_view
    assert "wg0" not in b.run(["ip", "-o", "addr"]).stdout

    a.remove_interface("wg0")
    assert "wg0" not in a.run(["ip", "-o", "addr"]).stdout
    with pytest.raises(LabError):
        a.remove_interface("wg0")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_teardown_leaves_nothing_behind(tmp_path: Path) -> None:
    lab = Lab()
    lan = lab.add_network("lan")
    a = lab.add_host("alpha", [lan])
    b = lab.add_host("beta", [lan])
    marker = MARKER_DIR / f"{lab.prefix}.json"
    workdir = lab.dir
    assert marker.exists() and workdir.is_dir() and a.dir.is_dir()
    # A process tree (grandchildren), a SIGTERM-ignoring process, a plain server.
    tree = a.popen(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    stubborn = b.popen(["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"])
    start_server(b)
    pids: set[int] = set()
    for h in (a, b):
        res = subprocess.run(["ip", "netns", "pids", h.ns], capture_output=True, text=True, check=True)
        pids |= {int(p) for p in res.stdout.split()}
    assert tree.pid in pids and stubborn.pid in pids and len(pids) >= 5
    assert set(lab.namespaces) <= _netns_list()

    t = time.perf_counter()
    lab.close()
    took = time.perf_counter() - t
    print(f"\nclose() with a SIGTERM-ignoring process: {took:.3f}s")
    assert took < 2.0
    assert not set(lab.namespaces) & _netns_list()
    assert not [p for p in pids if _alive(p)]
    assert tree.returncode is not None and stubborn.returncode == -signal.SIGKILL
    assert not marker.exists() and not workdir.exists()

    lab.close()  # idempotent
    with pytest.raises(LabError):
        a.popen(["true"])

    # The common case: processes that honour SIGTERM -> fast.
    with Lab() as lab2:
        net = lab2.add_network("lan")
        h = lab2.add_host("alpha", [net])
        start_server(h)
        h.popen(["sleep", "300"])
    print(f"close() of a well-behaved lab: {lab2.timings['close']:.3f}s")
    assert lab2.timings["close"] < 1.0
    assert not set(lab2.namespaces) & _netns_list()


CRASHER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from tests.lab.netlab import Lab
lab = Lab()
net = lab.add_network("lan")
h = lab.add_host("alpha", [net])
p = h.popen(["sleep", "300"])
print(lab.prefix, p.pid, flush=True)
time.sleep(3600)
"""


def test_cleanup_stale_removes_only_dead_labs(lab: Lab) -> None:
    live = lab.add_host("alive", [lab.add_network("lan")])
    crasher = subprocess.Popen([PY, "-c", CRASHER, str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        prefix, sleeper = crasher.stdout.readline().split()  # type: ignore[union-attr]
    finally:
        crasher.send_signal(signal.SIGKILL)  # no atexit, no close(): a crash
        crasher.wait()
    crashed = {f"{prefix}-n-lan", f"{prefix}-h-alpha"}
    assert crashed <= _netns_list() and _alive(int(sleeper))

    # A namespace that looks like ours but has no marker: must not be touched.
    for _ in range(50):
        candidate = f"fl{secrets.token_hex(2)}"
        if (MARKER_DIR / f"{candidate}.json").exists():
            continue
        foreign = f"{candidate}-h-foreign"
        if subprocess.run(["ip", "netns", "add", foreign], capture_output=True).returncode == 0:
            break
    else:
        pytest.fail("could not create a foreign namespace")
    try:
        removed = cleanup_stale()
        names = _netns_list()
        # (a concurrent test session may have cleaned the crashed lab first)
        assert crashed <= set(removed) or not crashed & names
        assert not crashed & names
        assert foreign in names and live.ns in names and set(lab.namespaces) <= names
        assert not _alive(int(sleeper))
        assert not (MARKER_DIR / f"{prefix}.json").exists()
        assert (MARKER_DIR / f"{lab.prefix}.json").exists()
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=False)


@pytest.mark.parametrize("userns", ["unmapped", "map-root"])
def test_no_netns_rights_gives_one_clear_line(userns: str) -> None:
    """A user namespace fakes the two failure modes: euid != 0, and root without the right
    to create namespaces (like an unprivileged container)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from tests.lab.netlab import Lab, LabUnavailable\n"
        "try:\n    Lab()\nexcept LabUnavailable as e:\n    print(e)\n"
    )
    flags = ["--map-root-user"] if userns == "map-root" else []
    res = subprocess.run(
        ["unshare", "--user", *flags, PY, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    if userns == "unmapped":
        assert lines[0] == "flota lab needs root (network namespaces): run the lab tests as root"
    else:
        assert lines[0].startswith("flota lab: `ip netns add` failed: "), lines
