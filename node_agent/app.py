"""The node daemon: one asyncio program that serves, announces and registers.

Start order: identity -> gRPC server -> registration with the coordinator -> mDNS.
Stop order (SIGTERM/SIGINT): cancel jobs -> mDNS goodbye -> stop server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable

import grpc

from node_agent import __version__
from node_agent.announce import Announcer
from node_agent.config import NodeConfig
from node_agent.errors import ConfigError
from node_agent.facts import derive_network, interfaces, listen_addresses, probe_gpus, read_facts
from node_agent.hub import Hub
from node_agent.identity import Identity, load_identity
from node_agent.journal import Journal
from node_agent.local_models import LocalModel, probe_local_models
from node_agent.runner import Runner
from node_agent.servicer import NodeServicer
from node_agent.workspace import Workspace
from protos import statelock
from protos.channels import SERVER_OPTIONS, CallGate, client_options
from protos.contract import COORDINATOR_SERVER_NAME, fingerprint
from protos.flota.v1 import coordinator_pb2, coordinator_pb2_grpc, node_pb2_grpc, types_pb2

__all__ = ["NodeDaemon", "serve"]

log = logging.getLogger("flota.node")

WATCH_PERIOD_S = 2.0
MODELS_PERIOD_S = 10.0
REGISTER_PERIOD_S = 15.0


class NodeDaemon:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        try:
            self._lock = statelock.acquire(config.state_dir, "node daemon")
        except statelock.StateLocked as exc:
            raise ConfigError(str(exc)) from exc
        self.identity: Identity = load_identity(config.state_dir)
        self.hub = Hub()
        self.gpus = probe_gpus()
        self.port = 0
        self.ifaces = interfaces()
        self.network, self.network_source = derive_network(config.network, config.network_rules, self.ifaces)
        self.runner = Runner(
            self.identity.id,
            config.name,
            Workspace(config.state_dir / "work", allow_remotes=config.allow_remotes),
            Journal(config.state_dir / "jobs"),
            self.hub,
            lambda: config.slots,
            kill_grace_s=config.kill_grace_s,
            local_models=lambda: self.local_models,
        )
        self.addresses: list[str] = []
        self.local_models: tuple[LocalModel, ...] = ()
        self._registered = asyncio.Event()
        self._changed = asyncio.Event()  # addresses or profile changed: register again

    def info(self) -> types_pb2.NodeInfo:
        f = read_facts(str(self.config.state_dir), self.gpus, self.config.agent_clis)
        return types_pb2.NodeInfo(
            id=self.identity.id,
            name=self.config.name,
            version=__version__,
            network=self.network,
            network_source=self.network_source,
            labels=self.config.labels,
            slots=self.config.slots,
            addresses=self.addresses,
            running=self.runner.running,
            unreachable_after_s=self.config.unreachable_after_s,
            lost_after_s=self.config.lost_after_s,
            facts=types_pb2.Facts(
                cpu_count=f.cpu_count,
                load_1m=f.load_1m,
                memory_total_mb=f.memory_total_mb,
                memory_available_mb=f.memory_available_mb,
                gpus=[types_pb2.Gpu(name=g.name, memory_mb=g.memory_mb) for g in f.gpus],
                disk_free_mb=f.disk_free_mb,
                on_battery=f.on_battery,
                battery_percent=f.battery_percent,
                agent_clis=list(f.agent_clis),
                local_models=[
                    types_pb2.LocalModel(model=m.model, api_base=m.api_base) for m in self.local_models
                ],
                os=f.os,
                arch=f.arch,
                hostname=f.hostname,
            ),
        )

    async def _register_loop(self, channel: grpc.aio.Channel) -> None:
        """Tell the coordinator where this node listens: at start, on change, and now and
        then while no coordinator session is open (it may have restarted elsewhere)."""
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        delay = 0.2
        while True:
            # Cleared before the snapshot is read: a change after this point sets it again.
            self._changed.clear()
            try:
                await stub.RegisterNode(coordinator_pb2.RegisterNodeRequest(info=self.info()), timeout=5)
                if not self._registered.is_set():
                    log.info("registered with coordinator %s", self.identity.coordinator)
                self._registered.set()
                delay = REGISTER_PERIOD_S
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "cannot register with coordinator %s: %s", self.identity.coordinator, exc.details()
                )
                delay = min(max(delay * 2, 0.5), 5.0)
            try:
                await asyncio.wait_for(self._changed.wait(), delay)
            except TimeoutError:
                pass
            while self.hub.listening and not self._changed.is_set():
                # A coordinator holds a session: it knows where we are.
                try:
                    await asyncio.wait_for(self._changed.wait(), REGISTER_PERIOD_S)
                except TimeoutError:
                    pass

    async def _watch_loop(self, announcer: Announcer | None) -> None:
        """Re-derive the network profile and addresses; push changes at once."""
        while True:
            await asyncio.sleep(WATCH_PERIOD_S)
            try:
                ifaces = await asyncio.to_thread(interfaces)
            except OSError as exc:  # e.g. out of file descriptors: try again next time
                log.warning("cannot read the network interfaces: %s", exc)
                continue
            if ifaces == self.ifaces:
                continue
            self.ifaces = ifaces
            network = derive_network(self.config.network, self.config.network_rules, ifaces)
            addresses = listen_addresses(self.config.listen_host, self.port, ifaces)
            if network != (self.network, self.network_source) or addresses != self.addresses:
                if network[0] != self.network:
                    log.info("network profile changed: %s -> %s (%s)", self.network, network[0], network[1])
                self.network, self.network_source = network
                self.addresses = addresses
                self.hub.publish(heartbeat=self.info())
                self._changed.set()
                if announcer:
                    await self._announce(announcer.update, addresses)

    async def _models_loop(self) -> None:
        """Which models the local servers serve: at start, then every MODELS_PERIOD_S."""
        while True:
            models = await asyncio.to_thread(probe_local_models, self.config.model_servers)
            if models != self.local_models:
                log.info("local models: %s", ", ".join(m.model for m in models) or "none")
                self.local_models = models
                self.hub.publish(heartbeat=self.info())
            await asyncio.sleep(MODELS_PERIOD_S)

    async def _disconnect_loop(self) -> None:
        """Cut off from every coordinator for stop_after_disconnect_s: stop the jobs and
        push their work in progress, rather than run on for a result nobody may take."""
        limit = self.config.stop_after_disconnect_s
        loop = asyncio.get_running_loop()
        alone_since: float | None = loop.time()
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            if self.hub.listening:
                alone_since = None
                continue
            now = loop.time()
            if alone_since is None:
                alone_since = now
            elif now - alone_since >= limit and self.runner.active:
                stopped = self.runner.stop_all(
                    "partial", f"stopped after {limit:g} s cut off from the coordinator"
                )
                log.warning("no coordinator for %.0f s: stopping %d jobs", now - alone_since, stopped)

    async def _announce(
        self, step: Callable[[list[str], int], Awaitable[None]], addresses: list[str]
    ) -> None:
        """mDNS is a convenience: if it fails, say so and keep serving (registration and
        static addresses still let the coordinator find us)."""
        try:
            await step([a.rpartition(":")[0] for a in addresses], self.port)
        except Exception as exc:
            log.warning("mDNS announcement unavailable: %s", exc)

    async def run(
        self, stop: asyncio.Event, ready: Callable[[str, dict[str, object]], None] | None = None
    ) -> None:
        cfg, ident = self.config, self.identity
        gate = CallGate({"coordinator": None}, refusal="only the coordinator may call a node")
        server = grpc.aio.server(options=SERVER_OPTIONS, maximum_concurrent_rpcs=64, interceptors=[gate])
        node_pb2_grpc.add_NodeServicer_to_server(
            NodeServicer(self.runner, self.hub, self.info, cfg.heartbeat_s), server
        )
        creds = grpc.ssl_server_credentials(
            [(ident.key_pem, ident.cert_pem)], root_certificates=ident.ca_pem, require_client_auth=True
        )
        listen = (
            f"[{cfg.listen_host}]:{cfg.listen_port}"
            if ":" in cfg.listen_host
            else f"{cfg.listen_host}:{cfg.listen_port}"
        )
        try:
            self.port = server.add_secure_port(listen, creds)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {listen}: address in use or not available") from exc
        if not self.port:
            raise ConfigError(f"cannot listen on {listen}: address in use or not available")
        self.runner.resume()  # jobs a previous daemon left running: found again, not restarted
        await server.start()
        self.addresses = listen_addresses(cfg.listen_host, self.port, self.ifaces)
        state = {
            "pid": os.getpid(),
            "id": ident.id,
            "name": cfg.name,
            "port": self.port,
            "addresses": self.addresses,
            "network": self.network,
        }
        (cfg.state_dir / "daemon.json").write_text(json.dumps(state))
        line = (
            f"node {cfg.name} ({ident.id}) listening on {cfg.listen_host}:{self.port} network={self.network}"
        )
        if ready:  # the ready line goes to stdout once, for people and scripts alike
            ready(line, state)
        channel = grpc.aio.secure_channel(
            ident.coordinator,
            grpc.ssl_channel_credentials(ident.ca_pem, ident.key_pem, ident.cert_pem),
            options=client_options(COORDINATOR_SERVER_NAME),
        )
        announcer = None
        if cfg.mdns:
            der = ssl.PEM_cert_to_DER_cert(ident.cert_pem.decode())
            announcer = Announcer(ident.id, cfg.name, __version__, fingerprint(der))
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._register_loop(channel)),
                tg.create_task(self._watch_loop(announcer)),
                tg.create_task(self._models_loop()),
            ]
            if cfg.stop_after_disconnect_s > 0:
                tasks.append(tg.create_task(self._disconnect_loop()))
            if announcer:
                tg.create_task(self._announce(announcer.start, self.addresses))
            await stop.wait()
            log.info("stopping")
            for task in tasks:
                task.cancel()
        # Say goodbye first, so no new work is placed here, then stop what runs.
        self.runner.closing = True
        try:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            await stub.RegisterNode(
                coordinator_pb2.RegisterNodeRequest(info=self.info(), leaving=True), timeout=2
            )
        except grpc.aio.AioRpcError as exc:  # the coordinator may be gone too; it will see us lost
            log.info("could not say goodbye to the coordinator: %s", exc.code().name)
        await self.runner.stop()
        if announcer:
            try:
                await announcer.stop()
            except Exception as exc:  # a goodbye that cannot be sent must not block the stop
                log.warning("mDNS goodbye failed: %s", exc)
        await channel.close()
        await server.stop(grace=1.0)


async def serve(config: NodeConfig, ready: Callable[[str, dict[str, object]], None] | None = None) -> None:
    daemon = NodeDaemon(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.run(stop, ready)
