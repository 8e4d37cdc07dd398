"""`flota dashboard --open`: the page's URL, with its token, goes to the user's browser
(Python's webbrowser, which honours $BROWSER: here a stand-in that records what it was
given and stays open, as a browser does); with no browser, one line, and the page is served
all the same."""

from __future__ import annotations

import http.client
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.dashboard.conftest import Dashboard
from tests.fleet import Fleet, wait_until

pytestmark = pytest.mark.timeout(120)


def _loads(url: str) -> None:
    """The URL as a browser takes it: the token set as a cookie, then the page."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 303, reply.status
        cookie = (reply.getheader("Set-Cookie") or "").split(";")[0]
        conn.request("GET", "/", headers={"Cookie": cookie})
        page = conn.getresponse()
        assert page.status == 200 and "<title>flota</title>" in page.read().decode()
    finally:
        conn.close()


def test_open_gives_the_browser_the_url_with_its_token(dash_fleet: Fleet, tmp_path: Path) -> None:
    given, pid = tmp_path / "url", tmp_path / "pid"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho $$ > {pid}\nprintf %s "$1" > {given}\nexec sleep 60\n')
    browser.chmod(0o755)
    d = Dashboard(dash_fleet, "--open", env={"BROWSER": str(browser)})
    try:
        wait_until(lambda: given.exists() and given.read_text(), what="the browser given the URL")
        url = given.read_text()
        assert url == d.url and urlsplit(url).query == f"token={d.token}"
        _loads(url)
        started = time.monotonic()
        assert d.stop() == 0  # the browser still open does not hold the dashboard's exit
        assert time.monotonic() - started < 10
        assert "Traceback" not in d.stderr()
    finally:
        d.stop()
        if pid.exists():
            try:
                os.kill(int(pid.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass


def test_open_with_no_browser_says_so_in_one_line_and_serves(dash_fleet: Fleet, tmp_path: Path) -> None:
    none = {"BROWSER": str(tmp_path / "no-such-browser"), "DISPLAY": "", "WAYLAND_DISPLAY": "", "TERM": ""}
    d = Dashboard(dash_fleet, "--open", env=none)
    try:
        assert d.proc.stderr is not None
        line = d.proc.stderr.readline()
        assert (
            line
            == "flota dashboard: no browser to open the page in (set $BROWSER); open the URL it printed\n"
        )
        _loads(d.url)
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
    assert d.stderr() == ""  # nothing more: no traceback
