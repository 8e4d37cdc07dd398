"""`flota node add USER@HOST[:PORT]`: install a node daemon over SSH, as a service.

Preflight, then act. Before anything changes on the host: the coordinator answers and
the name is free in the fleet, the host key is pinned (cli/install/ssh.py), the host's
facts pass (cli/install/preflight.py), and the wheelhouse for its platform is built here
(cli/install/wheelhouse.py). Then, each step recorded in the host's manifest as it is
done (cli/install/manifest.py): directories, the wheels over SFTP, a venv in
`~/.local/share/flota/versions/<version>/` installed with `pip --no-index`, the `current`
link, the join (the token from the coordinator goes to `python -m node_agent join
--token-stdin` over the channel's stdin: never in a command line, never on disk),
node.toml, the service (cli/install/service.py), and a wait until the node is online.
A step that fails undoes them all (cli/install/uninstall.py) and names its reason.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import paramiko

from cli import __version__
from cli.client import Client, CliError
from cli.install import wheelhouse
from cli.install.manifest import FORMAT, delete_record, encode, save_record
from cli.install.preflight import Facts, Python, Wish, installed, parse, probe_script, problems, service_kind
from cli.install.service import Layout, launchd_plist, service_file, start_commands, systemd_unit
from cli.install.ssh import Remote, SshOptions, connect
from cli.install.uninstall import undo

__all__ = ["AddArgs", "add", "make_venv", "must", "node_toml", "pip_install", "ship", "wait_online"]

Say = Callable[[str], None]
MB = 1024 * 1024
TOKEN_TTL_S = 900.0


@dataclass(frozen=True)
class AddArgs:
    target: str
    ssh: SshOptions
    name: str | None = None
    network: str | None = None
    slots: int | None = None
    labels: tuple[tuple[str, str], ...] = ()
    listen: str = "0.0.0.0:7380"
    service: str | None = None
    python: str | None = None
    extras: tuple[str, ...] = ()
    online: bool = False
    dial_home: bool = False
    dry_run: bool = False
    wait_s: float = 60.0


def _refuse(found: list[str]) -> None:
    if found:
        for line in found[:-1]:
            print(f"flota: {line}", flush=True, file=sys.stderr)
        raise CliError(found[-1])


def add(client: Client, a: AddArgs, say: Say) -> dict[str, Any]:
    fleet = {n.info.name: n.info.id for n in client.list_nodes().nodes}
    remote = connect(a.target, a.ssh)
    try:
        return _add(client, remote, a, fleet, say)
    finally:
        remote.close()


def _add(client: Client, remote: Remote, a: AddArgs, fleet: dict[str, str], say: Say) -> dict[str, Any]:
    probe = remote.run("sh -s", stdin=probe_script(a.python).encode(), timeout=60)
    facts = parse(probe.out)
    if not facts.os:
        raise CliError(f"the preflight on {remote.target} printed nothing: {probe.line()}")
    build_id = wheelhouse.source_hash(wheelhouse.source_root())
    kind = service_kind(facts, a.service)
    name = a.name or facts.hostname.split(".")[0]
    wish = Wish(str(remote.target), name, kind, __version__, build_id, a.python, 0, fleet)
    _refuse(problems(facts, wish))
    py = facts.python
    assert py is not None  # problems() said so otherwise
    free = f", {facts.disk_kb // 1024} MB free" if facts.disk_kb is not None else ""
    say(f"{remote.target}: {wheelhouse.describe(facts, py)} ({py.path}), {facts.git or 'git'}{free}")
    summary: dict[str, Any] = {
        "name": name,
        "host": str(remote.target),
        "version": wish.version,
        "build": build_id,
        "service": kind,
    }
    if installed(facts) is not None:
        return summary | _already(client, remote, facts, wish, a, say)
    wh = wheelhouse.build(facts, py, a.extras, a.online)
    size = wh.size
    say(
        f"wheelhouse: {len(wh.files())} wheels, {size / MB:.1f} MB "
        f"({'cached' if wh.cached else 'built'}: {wh.deps})"
    )
    summary |= {"wheelhouse_bytes": size, "wheelhouse_cached": wh.cached}
    _refuse(problems(facts, replace(wish, need_mb=size * 4 // MB + 50)))
    job = _Install(client, remote, a, facts, py, wish, wh, say)
    if a.dry_run:
        return summary | {"state": "dry-run", "changes": [what for what, _ in job.steps()]}
    return summary | job.run()


def _already(
    client: Client, remote: Remote, facts: Facts, wish: Wish, a: AddArgs, say: Say
) -> dict[str, Any]:
    m = facts.manifest or {}
    node = m.get("node") or {}
    layout = Layout(facts.home, facts.user, facts.uid, facts.root)
    svc = m.get("service") or {}
    changes = []
    if svc.get("kind") == "none" and not facts.daemon_running:
        changes.append("start the node daemon again (it was not running)")
    if a.dry_run:
        return {"state": "already installed", "id": node.get("id"), "changes": changes}
    if changes:
        say(changes[0])
        must(remote, start_commands("none", layout, "")[0], "cannot start the node daemon")
    say(f"flota {wish.version} is already installed on {wish.host} as node {node.get('name')}")
    wait_online(client, remote, layout, str(node.get("id")), a.wait_s)
    return {"state": "already installed", "id": node.get("id"), "changes": changes}


def must(remote: Remote, command: str, what: str, stdin: bytes | None = None, timeout: float = 600) -> str:
    ran = remote.run(command, stdin=stdin, timeout=timeout)
    if ran.code != 0:
        raise CliError(f"{what} on {remote.target.host}: {ran.line()}")
    return ran.out


def wait_online(client: Client, remote: Remote, layout: Layout, node_id: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while wait_s > 0:
        for n in client.list_nodes().nodes:
            if n.info.id == node_id and n.state == "online":
                return
        if time.monotonic() >= deadline:
            tail = remote.run(f"tail -n 1 {shlex.quote(layout.log)} 2>/dev/null").out.strip()
            raise CliError(
                f"the node did not come online within {wait_s:.0f} s"
                + (f" (its log ends: {tail[-200:]})" if tail else "")
            )
        time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))


# The steps that put a version's venv in place: add's, and upgrade's beside the old one.


def ship(remote: Remote, wh: wheelhouse.Wheelhouse, incoming: str) -> None:
    """The wheelhouse to `incoming` on the host, over SFTP."""
    remote.mkdir(incoming, 0o700)
    for path in wh.files():
        remote.put(path, f"{incoming}/{path.name}")


def make_venv(remote: Remote, layout: Layout, python: str, vdir: str) -> None:
    remote.run(f"mkdir -p {shlex.quote(layout.root)}/versions")
    must(remote, f"{shlex.quote(python)} -m venv --without-pip {shlex.quote(vdir)}", "cannot create a venv")


def pip_install(
    remote: Remote, wh: wheelhouse.Wheelhouse, inc: str, vdir: str, extras: tuple[str, ...], online: bool
) -> None:
    """flota and the node's packages into the venv `vdir`, from the shipped wheels (then removed)."""
    pip_wheel = next(p.name for p in wh.files() if p.name.startswith("pip-"))
    py = f"{vdir}/bin/python"
    env = "PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1"
    index = "" if online else " --no-index"
    reqs = wheelhouse.requirements(extras, False)
    deps = (
        f"{env} {shlex.quote(py)} {shlex.quote(inc + '/' + pip_wheel)}/pip install -q{index} "
        f"--find-links {shlex.quote(inc)} " + " ".join(shlex.quote(r) for r in reqs)
    )
    must(remote, deps, "pip could not install the node's packages")
    flota = (
        f"{env} {shlex.quote(py)} -m pip install -q --no-index --no-deps "
        f"{shlex.quote(inc + '/' + wh.flota.name)}"
    )
    must(remote, flota, "pip could not install flota")
    remote.run(f"rm -rf -- {shlex.quote(inc)}")


def node_toml(name: str, a: AddArgs) -> str:
    """The node.toml add writes: what the flags asked for."""
    lines = [f"name = {json.dumps(name)}", f"listen = {json.dumps(a.listen)}"]
    if a.network:
        lines.append(f"network = {json.dumps(a.network)}")
    if a.slots is not None:
        lines.append(f"slots = {a.slots}")
    if a.dial_home:  # the node opens the link itself (behind NAT): it announces no address
        lines.append("dial_home = true")
    if a.labels:
        lines.append(
            "labels = { " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in a.labels) + " }"
        )
    return "\n".join(lines) + "\n"


class _Install:
    """The act phase: each step says what it changes, and records it in the manifest."""

    def __init__(
        self,
        client: Client,
        remote: Remote,
        a: AddArgs,
        facts: Facts,
        py: Python,
        wish: Wish,
        wh: wheelhouse.Wheelhouse,
        say: Say,
    ) -> None:
        self.client, self.remote, self.a, self.facts, self.py, self.wish = client, remote, a, facts, py, wish
        self.wh, self.say = wh, say
        self.layout = Layout(facts.home, facts.user, facts.uid, facts.root)
        self.kind = wish.service
        if self.kind == "system":
            self.kind = "system-launchd" if facts.os == "Darwin" else "system-systemd"
        self.vdir = self.layout.version_dir(wish.version)
        self.incoming = f"{self.layout.root}/incoming"
        self.kept_state = facts.root_entries is not None  # only node/ is there: kept by uninstall
        self.m: dict[str, Any] = {
            "format": FORMAT,
            "complete": False,
            "version": wish.version,
            "build": wish.build,
            "home": facts.home,
            "user": facts.user,
            "uid": facts.uid,
            "root": self.layout.root,
            "python": py.path,
            "created": [],
            "node": {},
            "coordinator": "",
            "service": {"kind": "", "asked": wish.service, "file": "", "linger": False, "created": []},
            "extras": list(a.extras),
            "online": a.online,
            "versions": [wish.version],  # each versions/<v> there (upgrade adds one)
        }

    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        L, wh = self.layout, self.wh
        svc_file = service_file(self.kind, L)
        steps = [
            (f"create {L.root} (and any missing parent)", self._dirs),
            (
                f"copy {len(wh.files())} wheels ({wh.size / MB:.1f} MB) to {self.incoming} over SFTP",
                self._ship,
            ),
            (f"create a venv with {self.py.path} in {self.vdir}", self._venv),
            (
                f"pip install flota {self.wish.version} and {len(wh.requirements)} packages there "
                f"({'from the host' + chr(39) + 's index' if self.a.online else '--no-index'})",
                self._pip,
            ),
            (f"point {L.root}/current at versions/{self.wish.version}", self._link),
            (
                f"join the fleet as {self.wish.name} (a one-time token on the ssh channel's stdin), "
                f"state in {L.state}",
                self._join,
            ),
            (f"write {L.state}/node.toml", self._settings),
        ]
        if self.kind == "none":
            steps.append(
                (f"start the node daemon detached (pidfile {L.pidfile}, log {L.log})", self._service)
            )
        else:
            steps.append((f"install and start the {self.kind} service {svc_file}", self._service))
        if self.kind == "systemd" and self.facts.linger != "yes":
            steps.append(
                (f"loginctl enable-linger {L.user} (so the node runs without a login)", self._linger)
            )
        steps.append((f"write {L.manifest}, then wait for the node to be online", self._finish))
        return steps

    def _save(self) -> None:
        self.remote.write(self.layout.manifest, encode(self.m), 0o600)

    def run(self) -> dict[str, Any]:
        try:
            for what, do in self.steps():
                self.say(what)
                try:
                    do()
                except (OSError, paramiko.SSHException) as exc:  # SFTP, or the connection
                    raise CliError(f"{what}: failed on {self.wish.host}: {exc}") from exc
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, CliError):
                raise CliError(f"{exc} (undone: {self.wish.host} is as it was)", exc.code) from None
            raise
        return {"state": "installed", "id": self.m["node"]["id"], "changes": [w for w, _ in self.steps()]}

    def _rollback(self) -> None:
        self.say("undoing what was done")
        try:
            undo(self.remote, self.m, self.kept_state, self.say)
        except Exception as exc:  # the first error is the one to report
            self.say(f"could not undo everything: {exc}")
        node_id = self.m["node"].get("id")
        if node_id:
            try:
                self.client.remove_node(str(node_id))
            except CliError as exc:
                self.say(f"could not remove node {node_id} from the fleet: {exc}")
        delete_record(self.wish.name)

    def _dirs(self) -> None:
        home = self.layout.home
        for d in (f"{home}/.local", f"{home}/.local/share"):
            if not self.remote.exists(d):
                self.remote.mkdir(d, 0o755)
                self.m["created"].append(d)
        if not self.remote.exists(self.layout.root):
            self.remote.mkdir(self.layout.root, 0o700)
        self._save()

    def _ship(self) -> None:
        ship(self.remote, self.wh, self.incoming)

    def _venv(self) -> None:
        make_venv(self.remote, self.layout, self.py.path, self.vdir)

    def _pip(self) -> None:
        pip_install(self.remote, self.wh, self.incoming, self.vdir, self.a.extras, self.a.online)

    def _link(self) -> None:
        current = f"{self.layout.root}/current"
        must(
            self.remote,
            f"ln -sfn versions/{shlex.quote(self.wish.version)} {shlex.quote(current)}",
            "cannot link current",
        )

    def _join(self) -> None:
        reply = self.client.create_token(TOKEN_TTL_S)  # one-time; it expires unused if we fail
        address, L = reply.join_address, self.layout
        cmd = (
            f"cd {shlex.quote(L.root)} && {shlex.quote(L.python)} -m node_agent join {shlex.quote(address)} "
            f"--token-stdin --name {shlex.quote(self.wish.name)} --state-dir {shlex.quote(L.state)} --json"
        )
        ran = self.remote.run(cmd, stdin=reply.token.encode() + b"\n", timeout=120)
        if ran.code != 0:
            raise CliError(
                f"the join failed on {self.remote.target.host}: {ran.line().removeprefix('flota: ')}"
            )
        joined = json.loads(ran.out.strip().splitlines()[-1])
        self.m["node"] = {"id": joined["id"], "name": joined["name"]}
        self.m["coordinator"] = address
        self._save()

    def _settings(self) -> None:
        self.remote.write(f"{self.layout.state}/node.toml", node_toml(self.wish.name, self.a).encode(), 0o600)

    def _service(self) -> None:
        L, svc = self.layout, self.m["service"]
        path = service_file(self.kind, L)
        svc["kind"], svc["file"] = self.kind, path
        if self.kind in ("systemd", "launchd"):
            parts = path.rsplit("/", 1)[0].removeprefix(L.home + "/").split("/")
            for i in range(len(parts)):
                d = f"{L.home}/{'/'.join(parts[: i + 1])}"
                if not self.remote.exists(d):
                    self.remote.mkdir(d, 0o755)
                    svc["created"].append(d)
            if self.kind == "systemd":
                wants = f"{path.rsplit('/', 1)[0]}/default.target.wants"
                if not self.remote.exists(wants):
                    svc["created"].append(wants)  # `systemctl enable` makes it; rmdir'ed if empty
        self._save()
        system = self.kind.startswith("system-")  # not "systemd": that is the user's unit
        text = launchd_plist(L, system) if self.kind.endswith("launchd") else systemd_unit(L, system).encode()
        if system:
            must(
                self.remote,
                f"sudo -n tee {shlex.quote(path)} >/dev/null && sudo -n chmod 644 {shlex.quote(path)}",
                "cannot write the service file",
                stdin=text,
            )
        elif path:
            self.remote.write(path, text, 0o644)
        for command in start_commands(self.kind, L, path):
            must(self.remote, command, "cannot start the service")

    def _linger(self) -> None:
        must(self.remote, f"loginctl enable-linger {shlex.quote(self.layout.user)}", "cannot enable linger")
        self.m["service"]["linger"] = True
        self._save()

    def _finish(self) -> None:
        self.m["complete"] = True
        self._save()
        a = self.a
        save_record(
            self.wish.name,
            {
                "target": str(self.remote.target),
                "identity": a.ssh.identity,
                "known_hosts": a.ssh.known_hosts,
                "fingerprint": a.ssh.fingerprint,
            },
        )
        wait_online(self.client, self.remote, self.layout, str(self.m["node"]["id"]), a.wait_s)
