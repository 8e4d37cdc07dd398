"""node_agent/announce.py: what a node's mDNS announcement carries.

Everyone on the LAN reads it, so it names the node by id only (SECURITY.md: "no name").
Zeroconf itself is replaced by a recorder: nothing is sent on any network."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from zeroconf import ServiceInfo

from node_agent import announce
from node_agent.announce import Announcer, instance_name
from protos.contract import SERVICE_TYPE, TXT_FINGERPRINT, TXT_ID, TXT_PORT, TXT_VERSION

NODE_ID = "0123456789abcdef"


class Recorder:
    """Stands in for AsyncZeroconf: keeps what would have been announced."""

    def __init__(self, **_: Any) -> None:
        self.registered: list[ServiceInfo] = []
        self.updated: list[ServiceInfo] = []

    async def async_register_service(self, info: ServiceInfo, allow_name_change: bool = False) -> None:
        self.registered.append(info)

    async def async_update_service(self, info: ServiceInfo) -> None:
        self.updated.append(info)

    async def async_unregister_service(self, info: ServiceInfo) -> None:
        pass

    async def async_close(self) -> None:
        pass


def announced(monkeypatch: pytest.MonkeyPatch) -> list[ServiceInfo]:
    zcs: list[Recorder] = []

    def make(**kw: Any) -> Recorder:
        zcs.append(Recorder(**kw))
        return zcs[-1]

    monkeypatch.setattr(announce, "AsyncZeroconf", make)

    async def go() -> None:
        a = Announcer(NODE_ID, "1.2.3", "fp-abc")
        await a.start(["192.168.1.20", "laptop.example"], 7000)
        await a.update(["192.168.1.21"], 7001)
        await a.stop()

    asyncio.run(go())
    return zcs[0].registered + zcs[0].updated


def test_the_announcement_names_the_node_by_id_only(monkeypatch: pytest.MonkeyPatch) -> None:
    infos = announced(monkeypatch)
    assert len(infos) == 2
    for info in infos:
        assert info.name == f"flota-{NODE_ID}.{SERVICE_TYPE}"
        assert info.server == f"flota-{NODE_ID}.local."
        txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        assert set(txt) == {TXT_ID, TXT_VERSION, TXT_PORT, TXT_FINGERPRINT}
        assert txt[TXT_ID] == NODE_ID and txt[TXT_FINGERPRINT] == "fp-abc"
    assert [i.port for i in infos] == [7000, 7001]


def test_the_announcer_is_never_given_the_name() -> None:
    # The node's name cannot leak through the announcement if the announcer never has it.
    import inspect

    assert list(inspect.signature(Announcer).parameters) == ["node_id", "version", "cert_fingerprint"]


def test_instance_name_fits_a_dns_label() -> None:
    assert instance_name(NODE_ID) == f"flota-{NODE_ID}"
    assert len(instance_name("a" * 32)) <= 63
