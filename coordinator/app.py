"""The coordinator's composition root: state, servers, discovery, the reconcile loop.

Start: CA (made on first start) -> own and admin certificates -> store -> reconcile
state -> service -> API and enrollment servers -> discovery. Everything that runs in
the background (the loop, discovery, every background node call) lives in one task
group here. Stop (SIGTERM/SIGINT) has one path: the task group (the loop and every call
still out), then the servers, discovery, node links and the store.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import signal
from collections.abc import Callable

import grpc

from coordinator.api import CoordinatorServicer, EnrollmentServicer, add_to_server
from coordinator.config import CoordinatorConfig
from coordinator.convert import node_status_to_pb
from coordinator.discovery import Discovery
from coordinator.dispatch import Link
from coordinator.errors import ConfigError, PkiError
from coordinator.link import Credentials, NodeLink
from coordinator.pki import CertificateAuthority, KeyPair, read_private, write_private
from coordinator.reconcile import Reconciler
from coordinator.service import Service
from coordinator.store import Store
from coordinator.stream import watch_nodes
from protos import statelock
from protos.channels import SERVER_OPTIONS, CallGate
from protos.entry import lan_address
from protos.flota.v1 import coordinator_pb2, coordinator_pb2_grpc

__all__ = ["serve", "Coordinator"]

log = logging.getLogger("flota.coordinator")


def _keypair(ca: CertificateAuthority, directory: str, issue: Callable[[], KeyPair]) -> KeyPair:
    from pathlib import Path

    d = Path(directory)
    key, cert = d / "key.pem", d / "cert.pem"
    ca_file = d / "ca.pem"
    if key.exists() and cert.exists() and ca_file.exists() and ca_file.read_bytes() == ca.cert_pem:
        return KeyPair(read_private(key), cert.read_bytes())
    pair = issue()
    write_private(key, pair.key_pem)
    write_private(cert, pair.cert_pem)
    write_private(d / "ca.pem", ca.cert_pem)
    return pair


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Coordinator:
    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        try:
            self._lock = statelock.acquire(config.state_dir, "coordinator")
        except statelock.StateLocked as exc:
            raise ConfigError(str(exc)) from exc
        except OSError as exc:
            raise ConfigError(f"cannot use {config.state_dir}: {exc.strerror or exc}") from exc
        try:
            self.ca = CertificateAuthority.load_or_create(config.state_dir / "ca")
            own = _keypair(self.ca, str(config.state_dir / "server"), self.ca.issue_coordinator)
            _keypair(self.ca, str(config.admin_dir), lambda: self.ca.issue_admin(getpass.getuser()))
        except (PkiError, OSError) as exc:
            raise ConfigError(f"cannot prepare certificates in {config.state_dir}: {exc}") from exc
        self.own = own
        self.store = Store(config.state_dir / "flota.db")
        self._creds = Credentials(own.key_pem, own.cert_pem, self.ca.cert_pem)
        self.rec = Reconciler(self.store, config, self._link)
        self.service = Service(self.rec, self.ca, config)
        self.api_port = 0
        self.join_port = 0

    def _link(self, node_id: str) -> Link:
        link = NodeLink(
            node_id,
            self._creds,
            self.rec.sessions.on_event,
            self.rec.sessions.on_link_state,
            self.config.heartbeat_s,
        )
        link.start()
        return link

    def _node_statuses(self) -> list[coordinator_pb2.NodeStatus]:
        return [node_status_to_pb(s.entry, s.address, s.error, s.link) for s in self.service.nodes()]

    async def run(
        self, stop: asyncio.Event, ready: Callable[[str, dict[str, object]], None] | None = None
    ) -> None:
        cfg = self.config
        advertise = cfg.advertise or (
            cfg.listen_host if cfg.listen_host not in ("0.0.0.0", "::") else lan_address()
        )
        # Nodes only register (one call at a time); the CLI's calls are the admin's own.
        api = grpc.aio.server(
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=256,
            interceptors=[CallGate({"admin": None, "node": 8})],
        )
        # Anyone may knock here (no client certificate): a few calls per address, 5 s to ask.
        join = grpc.aio.server(
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=16,
            interceptors=[CallGate({"": 4}, first_message_s=5.0)],
        )
        try:
            self.api_port = api.add_secure_port(
                _bind(cfg.listen_host, cfg.listen_port),
                grpc.ssl_server_credentials(
                    [(self.own.key_pem, self.own.cert_pem)],
                    root_certificates=self.ca.cert_pem,
                    require_client_auth=True,
                ),
            )
            # The enrollment port shows the CA certificate itself: a joining node checks
            # it against the token's pin before trusting anything.
            self.join_port = join.add_secure_port(
                _bind(cfg.listen_host, cfg.join_port),
                grpc.ssl_server_credentials([(self.ca.key_pem, self.ca.cert_pem)]),
            )
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen on {cfg.listen_host}:{cfg.listen_port}/{cfg.join_port}: {exc}"
            ) from exc
        if not self.api_port or not self.join_port:
            raise ConfigError(
                f"cannot listen on {cfg.listen_host} ports {cfg.listen_port} and {cfg.join_port}: "
                "address in use"
            )
        api_address = f"{advertise}:{self.api_port}"
        join_address = f"{advertise}:{self.join_port}"
        self.rec.load()
        add_to_server(CoordinatorServicer(self.service, join_address), api)
        coordinator_pb2_grpc.add_EnrollmentServicer_to_server(
            EnrollmentServicer(self.service, api_address), join
        )
        await api.start()
        await join.start()
        local = "127.0.0.1" if cfg.listen_host in ("0.0.0.0", "::") else cfg.listen_host
        write_private(cfg.admin_dir / "coordinator", f"{local}:{self.api_port}".encode())
        state = {
            "pid": os.getpid(),
            "api": api_address,
            "join": join_address,
            "local": f"{local}:{self.api_port}",
            "ca_fingerprint": self.ca.fingerprint,
        }
        (cfg.state_dir / "coordinator.json").write_text(json.dumps(state))
        line = (
            f"coordinator listening on {cfg.listen_host}:{self.api_port} (join {join_address}), "
            f"CA {self.ca.fingerprint[:16]}"
        )
        if ready:  # the ready line goes to stdout once, for people and scripts alike
            ready(line, state)
        discovery = Discovery(self.rec.sessions.hint, self.rec.sessions.goodbye) if cfg.mdns else None
        try:
            # Background calls end with this group, before the links close: none may
            # record a closing link as a failure.
            async with self.rec.background(), asyncio.TaskGroup() as tg:
                loop_task = tg.create_task(self.rec.run())
                nodes_task = tg.create_task(watch_nodes(self.rec.hub.stream, self._node_statuses))
                if discovery:
                    try:
                        await discovery.start()
                    except OSError as exc:
                        log.warning("mDNS discovery unavailable: %s", exc)
                        discovery = None
                await stop.wait()
                log.info("stopping")
                loop_task.cancel()
                nodes_task.cancel()
        finally:
            await api.stop(grace=1.0)
            await join.stop(grace=0)
            if discovery:
                await discovery.stop()
            await self.rec.dispatch.close()
            self.store.close()


async def serve(
    config: CoordinatorConfig, ready: Callable[[str, dict[str, object]], None] | None = None
) -> None:
    coordinator = Coordinator(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await coordinator.run(stop, ready)
