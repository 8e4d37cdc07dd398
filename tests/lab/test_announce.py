"""What a node's mDNS announcement tells everyone on the LAN, seen by a third party.

A plain zeroconf browser on another lab host resolves the real node's record: its
instance and host names carry the node id only, never the name its user gave it
("laptop" here), as SECURITY.md promises ("no name").
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from protos.contract import SERVICE_TYPE
from tests.lab.netlab import LineTail
from tests.lab.test_multihost import Site, site  # noqa: F401  (fixture)

pytestmark = pytest.mark.lab

BROWSE = r"""
import json, sys
from zeroconf import ServiceBrowser, ServiceListener, Zeroconf
zc = Zeroconf()
class L(ServiceListener):
    def add_service(self, zc, type_, name):
        info = zc.get_service_info(type_, name, timeout=3000)
        if info is not None:
            txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
            print(json.dumps({"name": name, "server": info.server, "txt": txt}), flush=True)
    def update_service(self, zc, type_, name):
        pass
    def remove_service(self, zc, type_, name):
        pass
ServiceBrowser(zc, sys.argv[1], L())
print(json.dumps({"browsing": True}), flush=True)
import time; time.sleep(3600)
"""


def test_the_announcement_carries_the_id_not_the_name(site: Site) -> None:  # noqa: F811
    browser = site.hosts["desktop"].popen(
        [sys.executable, "-c", BROWSE, SERVICE_TYPE], stdout=subprocess.PIPE, text=True
    )
    try:
        tail = LineTail(browser.stdout)
        tail.wait_for('"browsing"', timeout=15)
        site.start_coordinator()
        site.start_node("laptop")
        node_id = site.fleet.nodes()["laptop"]["info"]["id"]
        record = json.loads(tail.wait_for(r'"name"', timeout=25))
        assert record["name"] == f"flota-{node_id}.{SERVICE_TYPE}", record
        assert record["server"] == f"flota-{node_id}.local.", record
        assert record["txt"]["id"] == node_id
        assert "laptop" not in json.dumps(record), record
    finally:
        browser.terminate()
        browser.wait(10)
