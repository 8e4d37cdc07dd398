"""A tiny multi-host network lab built from Linux network namespaces.

Each *network* is a Linux bridge living in its own namespace; each *host* is a
namespace with ``lo`` up and one veth per network whose peer end is enslaved to
that network's bridge.  Nothing is created in the root namespace, nothing is
routed anywhere: hosts only see each other.  Only iproute2 (``ip``) is needed,
plus ``unshare`` and ``sh`` for per-host hostnames.  Must run as root.

    from tests.lab.netlab import Lab

    with Lab() as lab:
        lan = lab.add_network("lan")                    # 10.201.1.0/24
        a = lab.add_host("laptop", networks=[lan])      # 10.201.1.11 on eth0
        b = lab.add_host("desktop", networks=[lan])     # 10.201.1.12 on eth0
        srv = a.popen([sys.executable, "-m", "http.server", "--bind", a.address(), "8000"])
        b.run(["python3", "-c", f"import urllib.request as u; u.urlopen('http://{a.address()}:8000/')"])
        a.link_down(); ...; a.link_up()
        a.add_dummy("wg0", "10.99.0.2/24"); a.remove_interface("wg0")
    # every process killed, every namespace deleted

Names: every namespace is ``<prefix>-n-<network>`` or ``<prefix>-h-<host>``
where ``<prefix>`` is ``fl`` + 4 hex digits, unique per Lab.  A marker file
``/run/flota-lab/<prefix>.json`` records the creating pid (and its start time);
:func:`cleanup_stale` removes the namespaces of labs whose creator is gone and
never touches a namespace without such a marker.

This module deliberately has no pytest dependency.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "Host",
    "Lab",
    "LabError",
    "LabUnavailable",
    "LineTail",
    "Network",
    "cleanup_stale",
    "wait_until",
]

MARKER_DIR = Path("/run/flota-lab")
NETNS_DIR = Path("/run/netns")
DEFAULT_SUBNET_BASE = "10.201.0.0/16"  # network k gets 10.201.k.0/24
HOST_OFFSET = 10  # host number n gets .(10 + n) on every network it joins
MCAST_ROUTE = "224.0.0.0/4"

_PREFIX_RE = re.compile(r"^fl[0-9a-f]{4}$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class LabError(RuntimeError):
    """An ``ip`` command of the lab failed."""


class LabUnavailable(LabError):
    """Network namespaces cannot be used here (not root, no iproute2, no netns support)."""


# --------------------------------------------------------------------------- helpers


def _find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (
            p
            for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}", f"/bin/{name}")
            if os.access(p, os.X_OK)
        ),
        None,
    )


def _ip_tool() -> str:
    ip = _find_tool("ip")
    if ip is None:
        raise LabUnavailable("flota lab: iproute2 `ip` not found (install iproute2)")
    return ip


def _ip(
    args: Sequence[str], *, batch: Iterable[str] | None = None, ns: str | None = None, force: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``ip [-n ns] args`` or, with ``batch``, ``ip [-n ns] -batch -`` fed the lines."""
    cmd = [_ip_tool()]
    if ns is not None:
        cmd += ["-n", ns]
    if batch is not None:
        if force:
            cmd.append("-force")
        cmd += ["-batch", "-"]
        text = "\n".join(batch) + "\n"
    else:
        cmd += list(args)
        text = None
    return subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=30, check=False)


def _check(res: subprocess.CompletedProcess[str], what: str) -> None:
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().replace("\n", " | ")
        raise LabError(f"flota lab: {what} failed: {msg}")


def _proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/pid/stat)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'.
    fields = data[data.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3
    except (IndexError, ValueError):
        return None


def _is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (zombies hold no namespace)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = data[data.rfind(")") + 2 :][:1]
    return state not in ("Z", "X", "")


def _ns_key(ns: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_DIR / ns)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _pids_in_netns(keys: set[tuple[int, int]]) -> set[int]:
    """Pids whose network namespace is one of ``keys`` (what ``ip netns pids`` does)."""
    if not keys:
        return set()
    me = os.getpid()
    found: set[int] = set()
    with os.scandir("/proc") as it:
        for entry in it:
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid == me:
                continue
            try:
                st = os.stat(f"/proc/{pid}/ns/net")
            except OSError:  # gone, zombie or kernel thread we may not inspect
                continue
            if (st.st_dev, st.st_ino) in keys:
                found.add(pid)
    return found


def _kill_everything(
    namespaces: Iterable[str],
    handles: Iterable[subprocess.Popen[Any]],
    term_timeout: float,
    kill_timeout: float = 2.0,
) -> None:
    """SIGTERM every process in ``namespaces`` and every handle's process group, wait
    ``term_timeout``, then SIGKILL whatever is left (rescanning, so late forks die too)."""
    keys = {k for k in (_ns_key(ns) for ns in namespaces) if k is not None}
    handles = list(handles)
    for sig, grace in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout)):
        deadline = time.monotonic() + grace
        signalled: set[int] = set()
        while True:
            live_handles = [p for p in handles if p.poll() is None]
            pids = {pid for pid in _pids_in_netns(keys) if _is_alive(pid)}
            if not live_handles and not pids:
                return
            if time.monotonic() >= deadline:
                break
            for p in live_handles:
                if p.pid not in signalled:
                    signalled.add(p.pid)
                    with contextlib.suppress(OSError):
                        os.killpg(p.pid, sig)  # our handles lead their own session
                    with contextlib.suppress(OSError):
                        os.kill(p.pid, sig)
            for pid in pids - signalled:
                signalled.add(pid)
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            time.sleep(0.005 if sig == signal.SIGKILL else 0.01)


def _delete_namespaces(names: Sequence[str]) -> list[str]:
    """Delete namespaces (one ``ip -force -batch``); return those still present."""
    present = [n for n in names if (NETNS_DIR / n).exists()]
    if not present:
        return []
    with contextlib.suppress(Exception):
        _ip([], batch=[f"netns del {n}" for n in present], force=True)
    left = [n for n in present if (NETNS_DIR / n).exists()]
    for n in left:  # second chance, one by one
        with contextlib.suppress(Exception):
            _ip(["netns", "del", n])
    return [n for n in left if (NETNS_DIR / n).exists()]


_PROBED = False


def _probe_netns(prefix: str) -> None:
    """Once per process: can we create a network namespace? Raise LabUnavailable if not."""
    global _PROBED
    if _PROBED:
        return
    name = f"{prefix}-n-probe"
    res = _ip(["netns", "add", name])
    if res.returncode != 0:
        with contextlib.suppress(OSError):
            (NETNS_DIR / name).unlink()
        lines = (res.stderr or res.stdout).strip().splitlines()
        raise LabUnavailable(f"flota lab: `ip netns add` failed: {lines[-1] if lines else res.returncode}")
    _ip(["netns", "del", name])
    _PROBED = True


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not met within {timeout:.1f}s")
        time.sleep(interval)


class LineTail:
    """Collect a process's text output line by line in a background thread.

    ``tail = LineTail(proc.stdout)``; ``tail.wait_for(r"ready", timeout=5)`` returns the first
    matching line (regex string or predicate), already-read lines included.
    """

    def __init__(self, stream: IO[str] | IO[bytes]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[Any]) -> None:
        try:
            for raw in stream:
                line = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, match: str | Callable[[str], bool], timeout: float) -> str:
        pred = (lambda s: re.search(match, s) is not None) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if pred(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    state = "process output ended" if self._eof else f"timeout {timeout:.1f}s"
                    tail = "\n".join(self.lines[-20:])
                    raise TimeoutError(f"no line matching {match!r} ({state}); last output:\n{tail}")
                self._cond.wait(left)


# --------------------------------------------------------------------------- model


class Network:
    """A bridge ``br0`` inside its own namespace, with an IPv4 subnet."""

    def __init__(self, lab: Lab, name: str, index: int, subnet: ipaddress.IPv4Network) -> None:
        self.lab = lab
        self.name = name
        self.index = index
        self.subnet = subnet
        self.ns = f"{lab.prefix}-n-{name}"
        self.bridge = "br0"

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    def __repr__(self) -> str:
        return f"Network({self.name!r}, {self.subnet}, ns={self.ns!r})"


class Host:
    """A namespace with ``lo`` and one ``ethN`` veth per attached network."""

    def __init__(self, lab: Lab, name: str, index: int, hostname: bool, directory: Path) -> None:
        self.lab = lab
        self.name = name
        self.index = index
        self.ns = f"{lab.prefix}-h-{name}"
        self.use_hostname = hostname
        self.dir = directory  # a private working directory for this host's state
        self._ifaces: dict[str, str] = {}  # network name -> interface inside host
        self._addrs: dict[str, str] = {}  # network name -> address
        self._networks: dict[str, Network] = {}
        self._down: set[str] = set()

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ns={self.ns!r}, addrs={self._addrs})"

    # -- addressing
    @property
    def networks(self) -> list[Network]:
        return list(self._networks.values())

    def _net(self, network: Network | str | None) -> Network:
        if network is None:
            if not self._networks:
                raise LabError(f"host {self.name} is on no network")
            return next(iter(self._networks.values()))
        name = network if isinstance(network, str) else network.name
        try:
            return self._networks[name]
        except KeyError:
            raise LabError(f"host {self.name} is not on network {name}") from None

    def address(self, network: Network | str | None = None) -> str:
        """The host's IPv4 address on ``network`` (default: its first network)."""
        return self._addrs[self._net(network).name]

    def interface(self, network: Network | str | None = None) -> str:
        """The host-side interface name (``eth0``...) on ``network`` (default: first)."""
        return self._ifaces[self._net(network).name]

    # -- processes
    def command(self, argv: Sequence[str], hostname: bool | None = None) -> list[str]:
        """The argv that runs ``argv`` inside this host (``ip netns exec ...``)."""
        lab = self.lab
        cmd = [lab._ipbin, "netns", "exec", self.ns]
        if self.use_hostname if hostname is None else hostname:
            cmd += [
                lab._unshare,
                "--uts",
                "--",
                lab._sh,
                "-c",
                'hostname "$0" 2>/dev/null || echo "$0" > /proc/sys/kernel/hostname; exec "$@"',
                self.name,
            ]
        return cmd + [os.fspath(a) for a in argv]

    def popen(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdout: Any = None,
        stderr: Any = None,
        *,
        hostname: bool | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the host; the lab kills it (and its children) at close.

        Same meaning as :class:`subprocess.Popen` for env/cwd/stdout/stderr/kwargs
        (pass ``text=True`` for str pipes).  The process leads its own session.
        ``hostname`` (default: the host's setting) runs it in a fresh UTS namespace
        whose hostname is the host name.
        """
        self.lab._ensure_open()
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(
            self.command(argv, hostname),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            **kwargs,
        )
        self.lab._track(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 10.0,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        hostname: bool | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a quick command inside the host, capture text output; raise on timeout or
        (with ``check``) on a non-zero exit."""
        proc = self.popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            hostname=hostname,
            text=True,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(list(argv), timeout, out, err) from None
        res = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check:
            res.check_returncode()
        return res

    # -- links
    def link_down(self, network: Network | str | None = None) -> None:
        """Cut the host off ``network``: ``ip link set ethN down`` inside the host."""
        net = self._net(network)
        _check(
            _ip(["link", "set", self._ifaces[net.name], "down"], ns=self.ns),
            f"link down {self.name}/{net.name}",
        )
        self._down.add(net.name)
        self._ensure_mcast_route()  # another network may carry multicast now

    def link_up(self, network: Network | str | None = None) -> None:
        """Restore the link cut by :meth:`link_down` (and the multicast route)."""
        net = self._net(network)
        self._down.discard(net.name)
        lines = [f"link set {self._ifaces[net.name]} up"]
        dev = self._mcast_dev()
        if dev:  # a link going down drops its routes: put the multicast route back
            lines.append(f"route replace {MCAST_ROUTE} dev {dev}")
        _check(_ip([], batch=lines, ns=self.ns), f"link up {self.name}/{net.name}")

    def attach(self, network: Network) -> str:
        """Plug the host into ``network`` (new veth ``ethN``); return the interface name."""
        return self._attach([network])[0]

    def _attach(self, networks: Sequence[Network], extra_first: Sequence[str] = ()) -> list[str]:
        # One `ip -batch` inside the host for all veths (+ ``extra_first`` lines), then one per
        # bridge namespace to enslave the peers: ~3 ms per ip process.
        self.lab._ensure_open()
        lines = list(extra_first)
        plan: list[tuple[Network, str, str, str]] = []
        used = set(self._ifaces.values())
        for network in networks:
            if network.lab is not self.lab:
                raise LabError("network belongs to another lab")
            if network.name in self._networks or any(n is network for n, *_ in plan):
                continue
            ifname = next(f"eth{i}" for i in range(100) if f"eth{i}" not in used)
            used.add(ifname)
            peer = f"v{self.index}"
            addr = network.subnet.network_address + HOST_OFFSET + self.index
            if addr not in network.subnet or addr == network.subnet.broadcast_address:
                raise LabError(f"no room for host {self.name} in {network.subnet}")
            lines.append(f"link add {ifname} type veth peer name {peer} netns {network.ns}")
            if not self.lab.ipv6:
                lines.append(f"link set {ifname} addrgenmode none")
            lines += [f"addr add {addr}/{network.prefixlen} dev {ifname}", f"link set {ifname} up"]
            plan.append((network, ifname, peer, str(addr)))
        if not self._mcast_dev() and plan:
            lines.append(f"route replace {MCAST_ROUTE} dev {plan[0][1]}")
        if lines:
            _check(_ip([], batch=lines, ns=self.ns), f"setting up host {self.name}")
        for network, ifname, peer, addr in plan:
            peer_lines = [f"link set {peer} addrgenmode none"] if not self.lab.ipv6 else []
            peer_lines.append(f"link set {peer} master {network.bridge} up")
            _check(_ip([], batch=peer_lines, ns=network.ns), f"bridge port {peer} on {network.name}")
            self._networks[network.name] = network
            self._ifaces[network.name] = ifname
            self._addrs[network.name] = addr
        return [self._ifaces[n.name] for n in networks]

    def _mcast_dev(self) -> str | None:
        up = [n for n in self._networks if n not in self._down]
        return self._ifaces[up[0]] if up else None

    def detach(self, network: Network | str) -> None:
        """Unplug the host from ``network`` (its veth pair is deleted)."""
        net = self._net(network)
        _check(_ip(["link", "del", self._ifaces[net.name]], ns=self.ns), f"detach {self.name}")
        for d in (self._networks, self._ifaces, self._addrs):
            d.pop(net.name, None)
        self._down.discard(net.name)
        self._ensure_mcast_route()

    def _ensure_mcast_route(self) -> None:
        # Without a default route, sending to 224.0.0.251 with no IP_MULTICAST_IF fails with
        # ENETUNREACH (zeroconf InterfaceChoice.Default, plain sockets). A real machine's default
        # route covers that; here we route 224.0.0.0/4 to the first attached network.
        dev = self._mcast_dev()
        if dev:
            _check(
                _ip(["route", "replace", MCAST_ROUTE, "dev", dev], ns=self.ns),
                f"multicast route on {self.name}",
            )

    # -- extra interfaces (VPN-like devices)
    def add_interface(
        self, name: str, kind: str = "dummy", address: str | None = None, up: bool = True
    ) -> None:
        """Create a link of ``kind`` named ``name`` inside the host, optionally with
        ``address`` (CIDR).  ``kind`` is an ``ip link add ... type`` kind (``dummy``,
        ``bridge``, ``ifb``...) or ``tun``/``tap`` (persistent ``ip tuntap`` device)."""
        if not _IFNAME_RE.match(name):
            raise ValueError(f"bad interface name {name!r} (<= 15 chars)")
        if kind in ("tun", "tap"):
            lines = [f"tuntap add dev {name} mode {kind}"]
        else:
            lines = [f"link add {name} type {kind}"]
        if address:
            ipaddress.ip_interface(address)  # validate
            lines.append(f"addr add {address} dev {name}")
        if up:
            lines.append(f"link set {name} up")
        res = _ip([], batch=lines, ns=self.ns)
        if res.returncode != 0:
            _ip(["link", "del", name], ns=self.ns)  # no half-made device
        _check(res, f"add {kind} interface {name} on {self.name}")

    def add_dummy(self, name: str, address: str | None = None) -> str:
        """A VPN-looking device appears, e.g. ``host.add_dummy("wg0", "10.99.0.2/24")``.

        Uses a ``dummy`` link, or a persistent ``tun`` device when the kernel has no dummy
        driver (as on the Firecracker CI kernel). tun is what wireguard-go, tailscale and
        OpenVPN create anyway. Note a tun with no reader has NO-CARRIER (operstate DOWN) but
        keeps its address. Returns the kind used.
        """
        try:
            self.add_interface(name, "dummy", address)
            return "dummy"
        except LabError as e:
            if "Unknown device type" not in str(e):
                raise
        self.add_interface(name, "tun", address)
        return "tun"

    def remove_interface(self, name: str) -> None:
        _check(_ip(["link", "del", name], ns=self.ns), f"remove interface {name} on {self.name}")


# --------------------------------------------------------------------------- lab

_OPEN_LABS: weakref.WeakSet[Lab] = weakref.WeakSet()


def _close_all_labs() -> None:
    for lab in list(_OPEN_LABS):
        lab.close()


atexit.register(_close_all_labs)


class Lab:
    """A set of networks and hosts; a context manager that tears everything down."""

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        ipv6: bool = False,
        term_timeout: float = 0.5,
        subnet_base: str = DEFAULT_SUBNET_BASE,
    ) -> None:
        self.ipv6 = ipv6
        self.term_timeout = term_timeout
        self.networks: dict[str, Network] = {}
        self.hosts: dict[str, Host] = {}
        self._subnet_base = ipaddress.IPv4Network(subnet_base)
        self._procs: list[subprocess.Popen[Any]] = []
        self._lock = threading.RLock()
        self._closed = False
        self._marker: Path | None = None
        self.timings: dict[str, float] = {}

        if os.geteuid() != 0:
            raise LabUnavailable("flota lab needs root (network namespaces): run the lab tests as root")
        self._ipbin = _ip_tool()
        unshare, sh = _find_tool("unshare"), _find_tool("sh")
        if unshare is None or sh is None:
            raise LabUnavailable("flota lab: `unshare` (util-linux) and `sh` are required")
        self._unshare, self._sh = unshare, sh

        self.prefix = self._claim_prefix()
        try:
            _probe_netns(self.prefix)
            if workdir is None:
                self.dir = Path(tempfile.mkdtemp(prefix=f"flota-lab-{self.prefix}-"))
                self._own_dir = True
            else:
                self.dir = Path(workdir)
                self.dir.mkdir(parents=True, exist_ok=True)
                self._own_dir = False
            self._write_marker()
        except BaseException:
            self._closed = True
            if self._marker is not None:
                self._marker.unlink(missing_ok=True)
            raise
        _OPEN_LABS.add(self)

    # -- prefix & marker
    def _claim_prefix(self) -> str:
        try:
            MARKER_DIR.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LabUnavailable(f"flota lab: cannot create {MARKER_DIR}: {e.strerror}") from None
        existing = set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()
        for _ in range(100):
            prefix = "fl" + secrets.token_hex(2)
            if any(n.startswith(prefix + "-") for n in existing):
                continue
            path = MARKER_DIR / f"{prefix}.json"
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            os.close(fd)
            self._marker = path
            return prefix
        raise LabError("flota lab: could not find a free lab prefix")

    def _write_marker(self) -> None:
        assert self._marker is not None
        data = {
            "pid": os.getpid(),
            "start": _proc_start_time(os.getpid()),
            "dir": str(self.dir),
            "own_dir": self._own_dir,
        }
        tmp = self._marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._marker)

    # -- building
    def _ensure_open(self) -> None:
        if self._closed:
            raise LabError("lab is closed")

    def _add_netns(self, ns: str) -> None:
        _check(_ip(["netns", "add", ns]), f"ip netns add {ns}")  # availability was probed already

    def add_network(self, name: str, subnet: str | None = None) -> Network:
        """A new bridge in its own namespace. Default subnet: 10.201.<k>.0/24 (k = 1, 2...)."""
        t0 = time.perf_counter()
        with self._lock:
            self._ensure_open()
            if not _NAME_RE.match(name) or name in self.networks:
                raise ValueError(f"bad or duplicate network name {name!r}")
            index = len(self.networks) + 1
            if subnet is None:
                net = list(self._subnet_base.subnets(new_prefix=24))[index]
            else:
                net = ipaddress.IPv4Network(subnet, strict=False)
            network = Network(self, name, index, net)
            self._add_netns(network.ns)
            self.networks[name] = network
            lines = [
                "link set lo up",
                f"link add {network.bridge} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
            ]
            if not self.ipv6:
                lines.append(f"link set {network.bridge} addrgenmode none")
            lines.append(f"link set {network.bridge} up")
            _check(_ip([], batch=lines, ns=network.ns), f"bridge for {name}")
        self.timings[f"network:{name}"] = time.perf_counter() - t0
        return network

    def add_host(self, name: str, networks: Sequence[Network] = (), *, hostname: bool = True) -> Host:
        """A new host namespace joined to ``networks`` (eth0, eth1... in that order).

        ``hostname=True`` makes processes started with :meth:`Host.popen` see ``name`` as
        their hostname (a fresh UTS namespace per process; costs ~4 ms per start).
        """
        t0 = time.perf_counter()
        with self._lock:
            self._ensure_open()
            if not _NAME_RE.match(name) or name in self.hosts:
                raise ValueError(f"bad or duplicate host name {name!r} (lowercase, digits, '-')")
            index = len(self.hosts) + 1
            directory = self.dir / name
            directory.mkdir(parents=True, exist_ok=True)
            host = Host(self, name, index, hostname, directory)
            self._add_netns(host.ns)
            self.hosts[name] = host
            host._attach(networks, extra_first=["link set lo up"])
        self.timings[f"host:{name}"] = time.perf_counter() - t0
        return host

    def _track(self, proc: subprocess.Popen[Any]) -> None:
        with self._lock:
            self._procs = [p for p in self._procs if p.returncode is None]
            self._procs.append(proc)

    @property
    def namespaces(self) -> list[str]:
        return [h.ns for h in self.hosts.values()] + [n.ns for n in self.networks.values()]

    # -- teardown
    def close(self) -> None:
        """Kill every process of the lab, delete every namespace. Idempotent, never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):
            _kill_everything(self.namespaces, self._procs, self.term_timeout)
        for p in self._procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=0.5)
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
        left: list[str] = []
        with contextlib.suppress(Exception):
            left = _delete_namespaces(self.namespaces)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        if not left and self._marker is not None:
            with contextlib.suppress(Exception):
                self._marker.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            _OPEN_LABS.discard(self)
        self.timings["close"] = time.perf_counter() - t0

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; atexit is the real backstop
        with contextlib.suppress(Exception):
            if not self._closed and self._marker is not None:
                self.close()

    def __repr__(self) -> str:
        return f"Lab({self.prefix}, networks={list(self.networks)}, hosts={list(self.hosts)})"


def cleanup_stale(term_timeout: float = 0.2) -> list[str]:
    """Remove what crashed earlier labs left behind; return the namespaces deleted.

    Only labs with a marker in /run/flota-lab whose creating process is gone (pid dead,
    or pid reused: different start time) are touched; only namespaces named
    ``<that prefix>-n-*`` / ``<that prefix>-h-*`` are deleted.  Never raises.
    """
    removed: list[str] = []
    try:
        markers = sorted(MARKER_DIR.glob("fl*.json"))
    except OSError:
        return removed
    for marker in markers:
        prefix = marker.stem
        if not _PREFIX_RE.match(prefix):
            continue
        try:
            data = json.loads(marker.read_text() or "{}")
        except (OSError, ValueError):
            data = {}
        pid = data.get("pid")
        if not isinstance(pid, int):
            # Being written right now (created empty, filled a moment later) or corrupt:
            # only treat it as stale if it is old.
            try:
                if time.time() - marker.stat().st_mtime < 60:
                    continue
            except OSError:
                continue
        elif _is_alive(pid) and _proc_start_time(pid) == data.get("start"):
            continue  # its lab is still running
        try:
            ours = [
                n
                for n in os.listdir(NETNS_DIR)
                if n.startswith(f"{prefix}-h-") or n.startswith(f"{prefix}-n-")
            ]
        except OSError:
            ours = []
        try:
            _kill_everything(ours, [], term_timeout)
            left = _delete_namespaces(ours)
        except Exception:
            continue
        removed += [n for n in ours if n not in left]
        if (
            data.get("own_dir")
            and isinstance(data.get("dir"), str)
            and Path(data["dir"]).name.startswith(f"flota-lab-{prefix}-")
        ):
            shutil.rmtree(data["dir"], ignore_errors=True)
        if not left:
            with contextlib.suppress(OSError):
                marker.unlink()
    return removed
