"""Finds node daemons announced over mDNS and passes their addresses on as hints.

What a browser learns is only where an enrolled id might listen; the link then dials
it expecting that id's certificate. Unknown ids are ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from protos.contract import SERVICE_TYPE, TXT_FINGERPRINT, TXT_ID
from protos.limits import NODE_ID_RE

__all__ = ["Discovery"]

log = logging.getLogger("flota.coordinator.discovery")


class Discovery:
    def __init__(
        self, hint: Callable[[str, list[str], str, str], bool], goodbye: Callable[[str], None]
    ) -> None:
        self._hint = hint
        self._goodbye = goodbye
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._ids: dict[str, str] = {}  # service name -> node id
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change])

    async def stop(self) -> None:
        if self._browser:
            await self._browser.async_cancel()
        if self._zc:
            await self._zc.async_close()

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            node_id = self._ids.pop(name, "")
            if node_id:
                self._goodbye(node_id)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, 3000):
            return
        raw = info.properties.get(TXT_ID.encode())
        node_id = raw.decode(errors="replace") if raw else ""
        if not NODE_ID_RE.match(node_id) or not info.port:
            return
        addresses = [f"{ip}:{info.port}" for ip in info.parsed_addresses(IPVersion.V4Only)][:8]
        raw_fp = info.properties.get(TXT_FINGERPRINT.encode())
        fp = raw_fp.decode(errors="replace") if raw_fp else ""
        if self._hint(node_id, addresses, "mdns", fp):
            self._ids[name] = node_id
            log.debug("mDNS: %s at %s", node_id, addresses)
