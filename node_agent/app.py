"""The node daemon's composition root: one asyncio program that serves, announces and registers.

Start order: identity -> the jobs a previous daemon left -> gRPC server -> registration
with the coordinator (:mod:`node_agent.register`) -> mDNS. The dial-home link
(:mod:`node_agent.home`) runs beside them; it ends last, after the goodbye, as the
server does.

Tasks: two task groups, owned here. The outer one holds every attempt's driver (the
runner's); the inner one the daemon's loops (register, watch, models, disconnect) and
the mDNS announcement. There is one way to stop, whatever asked for it (SIGTERM, SIGINT,
or the coordinator refusing this node): the stop event. Then the loops are cancelled,
the coordinator is told goodbye (so no new work comes), the jobs are stopped and
journaled as lost, mDNS says goodbye and the server stops. SIGUSR1 is the other stop,
"restart, keep jobs" (what `flota node upgrade` sends): the same, but without the
goodbye and without stopping the jobs: their drivers are let go, the jobs run on under
the keeper, and the next daemon takes them back from the journal, as after a crash.

Error handling: a refusal by the coordinator (the node was removed) stops the daemon
that way and then raises :class:`~node_agent.errors.NodeRefused` out of :meth:`NodeDaemon.run`.
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

from node_agent import __version__, convert
from node_agent.announce import Announcer
from node_agent.config import NodeConfig
from node_agent.errors import ConfigError, NodeRefused, SpawnError
from node_agent.facts import derive_network, interfaces, listen_addresses, probe_gpus, read_facts
from node_agent.home import DialHome
from node_agent.hub import Hub
from node_agent.identity import Identity, load_identity
from node_agent.journal import Journal
from node_agent.local_models import LocalModel, probe_local_models
from node_agent.process import KeeperClient
from node_agent.register import Registration
from node_agent.runner import Runner
from node_agent.servicer import NodeCalls, NodeServicer
from node_agent.workspace import Workspace
from protos import statelock
from protos.channels import SERVER_OPTIONS, CallGate, client_options
from protos.contract import COORDINATOR_SERVER_NAME, ResultStatus, build, fingerprint
from protos.flota.v1 import node_pb2_grpc, types_pb2

__all__ = ["NodeDaemon", "serve"]

log = logging.getLogger("flota.node")

WATCH_PERIOD_S = 2.0
MODELS_PERIOD_S = 10.0


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
            recheck_models=self._probe_models,
            output_cap=int(config.output_cap_mb * (1 << 20)),
            agent_idle_s=config.agent_idle_s,
        )
        self.addresses: list[str] = []
        self.local_models: tuple[LocalModel, ...] = ()
        self.calls = NodeCalls(self.runner, self.hub, self.info, config.heartbeat_s)
        self.registration: Registration | None = None  # made with the channel, in run()
        self._refused: NodeRefused | None = None  # why the coordinator will not have us
        self.restarting = False  # SIGUSR1: stop serving, but keep the jobs (an upgrade)

    def info(self) -> types_pb2.NodeInfo:
        cfg = self.config
        return convert.node_info(
            node_id=self.identity.id,
            name=cfg.name,
            version=__version__,
            build=build(),
            network=self.network,
            network_source=self.network_source,
            labels=cfg.labels,
            slots=cfg.slots,
            addresses=[] if cfg.dial_home else self.addresses,  # nothing to dial: we dial home
            running=self.runner.running,
            unreachable_after_s=cfg.unreachable_after_s,
            lost_after_s=cfg.lost_after_s,
            facts=read_facts(str(cfg.state_dir), self.gpus, cfg.agent_clis),
            local_models=self.local_models,
        )

    async def _register_loop(self, registration: Registration, stop: asyncio.Event) -> None:
        try:
            await registration.run()
        except NodeRefused as exc:  # stop as on SIGTERM; run() raises it once all is down
            self._refused = exc
            stop.set()

    async def _home_loop(self, home: DialHome, stop: asyncio.Event) -> None:
        try:
            await home.run()
        except NodeRefused as exc:
            self._refused = exc
            stop.set()

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
                if self.registration:
                    self.registration.changed.set()
                if announcer:
                    await self._announce(announcer.update, addresses)

    async def _models_loop(self) -> None:
        """Which models the local servers serve: at start, then every MODELS_PERIOD_S (and
        whenever a job could not reach its model server: the runner asks)."""
        while True:
            await self._probe_models()
            await asyncio.sleep(MODELS_PERIOD_S)

    async def _probe_models(self) -> None:
        cfg = self.config
        models = await asyncio.to_thread(probe_local_models, cfg.model_servers, cfg.model_slots)
        if models != self.local_models:
            log.info("local models: %s", ", ".join(m.model for m in models) or "none")
            self.local_models = models
            self.hub.publish(heartbeat=self.info())

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
                    ResultStatus.PARTIAL, f"stopped after {limit:g} s cut off from the coordinator"
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
        node_pb2_grpc.add_NodeServicer_to_server(NodeServicer(self.calls), server)
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
        try:
            async with asyncio.TaskGroup() as jobs:
                # Jobs a previous daemon left running: found again, not restarted.
                self.runner.resume(jobs)
                if cfg.warm_agents and self.runner.parents.agent_host is not None:
                    jobs.create_task(self._warm(self.runner.parents.agent_host))
                await self._serve(server, stop, ready)
        except BaseExceptionGroup as group:  # what failed in the body, as itself (one line for the user)
            (first, *others) = group.exceptions
            if not others and isinstance(first, Exception) and not isinstance(first, BaseExceptionGroup):
                raise first from None
            raise
        if self._refused is not None:
            raise self._refused

    @staticmethod
    async def _warm(host: KeeperClient) -> None:
        try:
            await host.open()
        except SpawnError as exc:  # the first llm job tries again
            log.error("%s", exc)

    async def _serve(
        self,
        server: grpc.aio.Server,
        stop: asyncio.Event,
        ready: Callable[[str, dict[str, object]], None] | None,
    ) -> None:
        cfg, ident = self.config, self.identity
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
        registration = self.registration = Registration(channel, self.info, self.hub, ident.coordinator)
        home = DialHome(channel, self.calls, self.hub, registration, ident.coordinator, always=cfg.dial_home)
        home_task = asyncio.create_task(self._home_loop(home, stop))
        try:
            await self._loops(registration, stop)
        finally:
            # The home link carries the goodbye's aftermath (the stopped jobs' results), as
            # the server does for a dialed session: it ends just before the server.
            home_task.cancel()
            await asyncio.gather(home_task, return_exceptions=True)
            await channel.close()
            await server.stop(grace=1.0)

    async def _loops(self, registration: Registration, stop: asyncio.Event) -> None:
        cfg, ident = self.config, self.identity
        announcer = None
        if cfg.mdns and not cfg.dial_home:  # mDNS tells the coordinator where to dial us
            der = ssl.PEM_cert_to_DER_cert(ident.cert_pem.decode())
            announcer = Announcer(ident.id, __version__, fingerprint(der))
        async with asyncio.TaskGroup() as loops:
            tasks = [
                loops.create_task(self._register_loop(registration, stop)),
                loops.create_task(self._watch_loop(announcer)),
                loops.create_task(self._models_loop()),
            ]
            if cfg.stop_after_disconnect_s > 0:
                tasks.append(loops.create_task(self._disconnect_loop()))
            if announcer:
                loops.create_task(self._announce(announcer.start, self.addresses))
            await stop.wait()
            log.info("stopping")
            for task in tasks:
                task.cancel()
        self.runner.closing = True
        if self.restarting:
            # Restart, keep jobs: no goodbye (the node is back in a moment), the jobs run on
            # under their keeper, and the next daemon takes them back from the journal.
            log.info("restarting: %d jobs keep running", len(self.runner.active))
            await self.runner.detach()
        else:
            # Say goodbye first, so no new work is placed here, then stop what runs.
            await registration.goodbye()
            await self.runner.stop()
        if announcer:
            try:
                await announcer.stop()
            except Exception as exc:  # a goodbye that cannot be sent must not block the stop
                log.warning("mDNS goodbye failed: %s", exc)


async def serve(config: NodeConfig, ready: Callable[[str, dict[str, object]], None] | None = None) -> None:
    daemon = NodeDaemon(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def restart() -> None:
        daemon.restarting = True
        stop.set()

    loop.add_signal_handler(signal.SIGUSR1, restart)
    await daemon.run(stop, ready)
