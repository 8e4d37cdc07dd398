"""mDNS announcement of `_flota._tcp.local.`: a hint where this node listens.

Only non-secret TXT keys go out (id, version, port, certificate fingerprint). The instance
and host names are built from the node id alone: the user's name for the node (often a
person's, "alice-laptop") would otherwise be broadcast on every network the machine joins.
A stop sends a goodbye so browsers drop the node at once.
"""

from __future__ import annotations

import ipaddress
import logging

from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from protos.contract import SERVICE_TYPE, TXT_FINGERPRINT, TXT_ID, TXT_PORT, TXT_VERSION

__all__ = ["Announcer", "instance_name"]

log = logging.getLogger(__name__)


def instance_name(node_id: str) -> str:
    """The mDNS instance (and host) label for `node_id`: no user-chosen text in it."""
    return f"flota-{node_id}"[:63]


class Announcer:
    def __init__(self, node_id: str, version: str, cert_fingerprint: str) -> None:
        self.node_id = node_id
        self.version = version
        self.fp = cert_fingerprint
        self._zc: AsyncZeroconf | None = None
        self._info: ServiceInfo | None = None

    def _service(self, addresses: list[str], port: int) -> ServiceInfo:
        ips = []
        for address in addresses:
            try:
                ips.append(ipaddress.ip_address(address.strip("[]")).packed)
            except ValueError:
                pass  # a host name: zeroconf announces our own addresses instead
        instance = instance_name(self.node_id)
        return ServiceInfo(
            SERVICE_TYPE,
            f"{instance}.{SERVICE_TYPE}",
            port=port,
            addresses=ips,
            properties={
                TXT_ID: self.node_id,
                TXT_VERSION: self.version,
                TXT_PORT: str(port),
                TXT_FINGERPRINT: self.fp,
            },
            server=f"{instance}.local.",
        )

    async def start(self, addresses: list[str], port: int) -> None:
        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        self._info = self._service(addresses, port)
        await self._zc.async_register_service(self._info, allow_name_change=True)

    async def update(self, addresses: list[str], port: int) -> None:
        if self._zc is None or self._info is None:
            return
        info = self._service(addresses, port)
        info.name = self._info.name  # keep the name probing settled on
        self._info = info
        await self._zc.async_update_service(info)

    async def stop(self) -> None:
        if self._zc is None:
            return
        try:
            if self._info is not None:
                await self._zc.async_unregister_service(self._info)  # the goodbye packet
        finally:
            await self._zc.async_close()
            self._zc = None
