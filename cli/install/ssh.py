"""SSH to a machine that is to become a node (paramiko): host keys pinned, never ignored.

A host is trusted when its key is in the user's known_hosts (or `--known-hosts FILE`), or
when its fingerprint is the `--fingerprint SHA256:...` given. An unknown key on a terminal
is shown (its fingerprint) and asked about once; if accepted it is added to the known_hosts
file, as ssh does. Without a terminal it is refused, with the fingerprint and the flag that
accepts it. A key that differs from the one on record is always refused.

Keys: `--identity KEY`, the ssh agent, the user's ~/.ssh/id_* and what ~/.ssh/config says
for the host (HostName, User, Port, IdentityFile, UserKnownHostsFile, ProxyCommand).

Error handling: every failure to connect is a `CliError` with one line naming the fix.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from cli.client import EXIT_UNAVAILABLE, CliError

__all__ = ["Remote", "SshOptions", "Target", "connect", "fingerprint", "parse_target"]

CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Target:
    user: str
    host: str
    port: int = 22

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" + ("" if self.port == 22 else f":{self.port}")

    @property
    def known_hosts_name(self) -> str:
        """The host as known_hosts writes it."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def parse_target(text: str) -> tuple[str | None, str, int | None]:
    """`USER@HOST[:PORT]` (HOST may be `[IPv6]`) -> (user or None, host, port or None)."""
    user, _, rest = text.rpartition("@")
    port: int | None = None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail and not tail.startswith(":"):
            host = ""
        tail = tail[1:]
    elif rest.count(":") == 1:
        host, _, tail = rest.partition(":")
    else:
        host, tail = rest, ""
    if tail:
        port = int(tail) if tail.isdigit() and 0 < int(tail) < 65536 else -1
    if not host or port == -1 or (user == "" and "@" in text) or any(c.isspace() for c in text):
        raise CliError(f"malformed host {text!r} (expected USER@HOST or USER@HOST:PORT)")
    return user or None, host, port


def fingerprint(key: paramiko.PKey) -> str:
    """As OpenSSH prints it: SHA256:<base64 of the key's sha256, unpadded>."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class SshOptions:
    identity: str | None = None
    known_hosts: str | None = None
    fingerprint: str | None = None
    # Asked when the key is unknown: True adds it. None: no terminal, refuse.
    ask: Callable[[str], bool] | None = None
    save_accepted: bool = True  # False in a dry run: an accepted key is trusted this once only
    timeout: float = CONNECT_TIMEOUT_S


class _UnknownKey(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__("unknown host key")
        self.key = key


class _Pin(paramiko.MissingHostKeyPolicy):
    """Called only for a host with no key on record: accept the --fingerprint, else stop."""

    def __init__(self, pinned: str | None) -> None:
        self.pinned = pinned

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if self.pinned is not None and fingerprint(key) == self.pinned:
            return
        raise _UnknownKey(key)


@dataclass(frozen=True)
class _Resolved:
    target: Target
    connect_host: str
    known_hosts: Path
    identities: list[str]
    proxy: str | None


def _resolve(text: str, opts: SshOptions) -> _Resolved:
    user, alias, port = parse_target(text)
    config: dict[str, Any] = {}
    path = Path.home() / ".ssh" / "config"
    if path.is_file():
        try:
            config = dict(paramiko.SSHConfig.from_path(str(path)).lookup(alias))
        except (OSError, paramiko.SSHException) as exc:
            raise CliError(f"cannot read {path}: {exc}") from exc
    host = str(config.get("hostname") or alias)
    user = user or config.get("user") or os.environ.get("USER") or "root"
    port = port or int(config.get("port") or 22)
    known = opts.known_hosts or (config.get("userknownhostsfile") or "~/.ssh/known_hosts").split()[0]
    identities = (
        [opts.identity] if opts.identity else [os.path.expanduser(p) for p in config.get("identityfile", [])]
    )
    identities = [p for p in identities if opts.identity or os.path.exists(p)]
    if opts.identity and not os.path.isfile(os.path.expanduser(opts.identity)):
        raise CliError(f"--identity {opts.identity}: no such key file")
    if opts.known_hosts and not os.path.isfile(os.path.expanduser(opts.known_hosts)):
        raise CliError(f"--known-hosts {opts.known_hosts}: no such file")
    return _Resolved(
        Target(str(user), alias if host == alias else host, port),
        host,
        Path(os.path.expanduser(known)),
        [os.path.expanduser(p) for p in identities],
        config.get("proxycommand"),
    )


def _client(r: _Resolved, opts: SshOptions, extra: paramiko.PKey | None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    if not opts.known_hosts and os.access("/etc/ssh/ssh_known_hosts", os.R_OK):
        client.load_system_host_keys("/etc/ssh/ssh_known_hosts")
    if r.known_hosts.is_file():
        try:
            client.load_host_keys(str(r.known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise CliError(f"cannot read {r.known_hosts}: {exc}") from exc
    if extra is not None:
        client.get_host_keys().add(r.target.known_hosts_name, extra.get_name(), extra)
    client.set_missing_host_key_policy(_Pin(opts.fingerprint))
    return client


def _connect_once(r: _Resolved, opts: SshOptions, extra: paramiko.PKey | None) -> paramiko.SSHClient:
    client = _client(r, opts, extra)
    where = f"{r.connect_host}:{r.target.port}"
    try:
        client.connect(
            r.connect_host,
            port=r.target.port,
            username=r.target.user,
            key_filename=r.identities or None,  # type: ignore[arg-type]  # paramiko takes a list too
            allow_agent=True,
            look_for_keys=not r.identities,
            timeout=opts.timeout,
            banner_timeout=opts.timeout,
            auth_timeout=opts.timeout,
            sock=paramiko.ProxyCommand(r.proxy) if r.proxy else None,
        )
        return client
    except _UnknownKey:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise CliError(
            f"the host key of {r.target.known_hosts_name} has CHANGED: {r.known_hosts} has "
            f"{fingerprint(exc.expected_key)}, the host shows {fingerprint(exc.key)}; refusing. If the "
            "host was reinstalled, remove the old key: "
            f"ssh-keygen -R {shlex.quote(r.target.known_hosts_name)}"
            + (f" -f {r.known_hosts}" if opts.known_hosts else "")
        ) from None
    except paramiko.PasswordRequiredException:
        client.close()
        raise CliError(
            f"the key {r.identities[0] if r.identities else ''} needs a passphrase: load it into the "
            "ssh agent (ssh-add KEY) and run this again"
        ) from None
    except paramiko.AuthenticationException:
        client.close()
        raise CliError(
            f"{r.target} refused our keys: pass --identity KEY, load the key into the ssh agent, or add "
            f"its .pub to ~/.ssh/authorized_keys of {r.target.user} on {r.target.host}"
        ) from None
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        client.close()
        reason = next(iter(exc.errors.values()), None)
        why = reason.strerror if isinstance(reason, OSError) and reason.strerror else "connection refused"
        raise CliError(
            f"cannot reach {where} over ssh ({why.lower()}): is sshd running there, on that port?",
            EXIT_UNAVAILABLE,
        ) from None
    except TimeoutError:
        client.close()
        raise CliError(
            f"cannot reach {where} over ssh: no answer within {opts.timeout:.0f} s", EXIT_UNAVAILABLE
        ) from None
    except OSError as exc:
        client.close()
        why = exc.strerror or str(exc)
        raise CliError(f"cannot reach {where} over ssh ({why.lower()})", EXIT_UNAVAILABLE) from None
    except paramiko.SSHException as exc:
        client.close()
        raise CliError(f"ssh to {where} failed: {str(exc).splitlines()[0] if str(exc) else exc}") from None


def _remember(path: Path, name: str, key: paramiko.PKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "a") as f:
        f.write(f"{name} {key.get_name()} {key.get_base64()}\n")


def connect(text: str, opts: SshOptions) -> Remote:
    """An authenticated session to `USER@HOST[:PORT]` whose host key is pinned, or CliError."""
    r = _resolve(text, opts)
    try:
        return Remote(_connect_once(r, opts, None), r.target)
    except _UnknownKey as unknown:
        key = unknown.key
    shown = f"{key.get_name()} {fingerprint(key)}"
    if opts.fingerprint is not None:
        raise CliError(
            f"the host key of {r.target.known_hosts_name} is {fingerprint(key)}, not the --fingerprint "
            f"{opts.fingerprint} given; refusing"
        )
    if opts.ask is None:
        raise CliError(
            f"the host key of {r.target.known_hosts_name} is not known ({shown}): check it on the host "
            f"(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then pass --fingerprint {fingerprint(key)}"
            f" (or add the key to {r.known_hosts})"
        )
    if not opts.ask(
        f"The host key of {r.target.known_hosts_name} is not known: {shown}.\n"
        f"Trust it{' and add it to ' + str(r.known_hosts) if opts.save_accepted else ''}?"
    ):
        raise CliError(f"the host key of {r.target.known_hosts_name} was not trusted; nothing was done")
    if opts.save_accepted:
        _remember(r.known_hosts, r.target.known_hosts_name, key)
    return Remote(_connect_once(r, opts, key), r.target)


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def line(self) -> str:
        """The last line the command printed on stderr (else stdout): its reason."""
        lines = [ln.strip() for ln in (self.err or self.out).splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {self.code}"


class Remote:
    """Commands and files on the host, over one SSH connection."""

    def __init__(self, client: paramiko.SSHClient, target: Target) -> None:
        self.client = client
        self.target = target
        self._sftp: paramiko.SFTPClient | None = None

    def run(self, command: str, stdin: bytes | None = None, timeout: float = 600.0) -> Ran:
        """Run `command` with the login shell (`sh -c` semantics); `stdin` is written and
        closed first, so a secret passed there is never in a command line."""
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise CliError(f"the ssh connection to {self.target} was lost", EXIT_UNAVAILABLE)
        chan = transport.open_session()
        try:
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                busy = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    busy = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    busy = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    raise CliError(
                        f"a command on {self.target.host} took over {timeout:.0f} s: {command[:60]}"
                    )
                if not busy:
                    time.sleep(0.01)
            return Ran(chan.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace"))
        finally:
            chan.close()

    # --- files (SFTP) --------------------------------------------------------------------

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except paramiko.SSHException as exc:
                raise CliError(
                    f"{self.target.host} offers no SFTP ({exc}): enable it in its sshd_config "
                    "(Subsystem sftp ...)"
                ) from None
        return self._sftp

    def exists(self, path: str) -> bool:
        try:
            self.sftp.lstat(path)
            return True
        except FileNotFoundError:
            return False

    def is_dir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self.sftp.stat(path).st_mode or 0)
        except FileNotFoundError:
            return False

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self.sftp.mkdir(path, mode)

    def put(self, local: Path, remote: str) -> None:
        self.sftp.put(str(local), remote)

    def write(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file whole (a temporary name, then a rename over the old one)."""
        tmp = remote + ".tmp"
        with self.sftp.open(tmp, "wb") as f:
            f.write(data)
        self.sftp.chmod(tmp, mode)
        self.sftp.posix_rename(tmp, remote)

    def read(self, remote: str) -> bytes | None:
        try:
            with self.sftp.open(remote, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()
