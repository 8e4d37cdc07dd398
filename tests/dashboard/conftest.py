"""One real fleet (a coordinator, nodes alpha and beta) and one `flota dashboard` for the
dashboard's tests, and Debian's chromium driven by Playwright (never a browser of
Playwright's own: the machine has no internet; scripts/test installs chromium)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.fleet import Fleet

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Dashboard:
    """`flota --json dashboard ARGS` running; its ready line read."""

    def __init__(self, fleet: Fleet, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [fleet.python, "-m", "cli", "--json", "dashboard", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**fleet.env, **(env or {})},
            cwd=fleet.home,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout or []], daemon=True).start()
        try:
            line = lines.get(timeout=30)
        except queue.Empty:
            self.stop()
            raise AssertionError(f"the dashboard did not start: {self.stderr()}") from None
        self.ready: dict[str, Any] = json.loads(line)
        self.url: str = self.ready["url"]
        parts = urlsplit(self.url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.token = parts.query.removeprefix("token=")
        self.port: int = self.ready["port"]

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture(scope="package")
def dash_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("dashboard") / "home")
    try:
        fleet.start_coordinator()
        fleet.start_node("alpha", "--slots", "2")
        fleet.start_node("beta")
        yield fleet
    finally:
        fleet.close()


@pytest.fixture(scope="package")
def dashboard(dash_fleet: Fleet) -> Iterator[Dashboard]:
    d = Dashboard(dash_fleet)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="package")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("FLOTA_SCREENSHOTS") or tmp_path_factory.mktemp("dashboard-screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {path}")
    return path


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    assert CHROMIUM, "no chromium on PATH: apt-get install chromium (scripts/test does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A browser tab on the dashboard (its cookie set from the printed URL); every console
    error and page error is kept, and the test fails on any."""

    def __init__(self, browser: Any, dashboard: Dashboard) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.expected: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.dashboard = dashboard

    def open(self, fragment: str = "") -> Any:
        self.page.goto(self.dashboard.url)
        if fragment:
            self.page.evaluate("f => { location.hash = f; }", fragment)
        self.page.wait_for_selector("#link.ok", timeout=20_000)  # the event stream is live
        return self.page

    def allow(self, text: str) -> None:
        """A console error the test causes on purpose (a refused request's status)."""
        self.expected.append(text)

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(x in e for x in self.expected)]

    def go(self, fragment: str) -> None:
        """Another view, without loading the page again."""
        self.page.evaluate("f => { location.hash = f; }", fragment)


@pytest.fixture
def tab(
    browser: Any, dashboard: Dashboard, screenshots: Path, request: pytest.FixtureRequest
) -> Iterator[Page]:
    t = Page(browser, dashboard)
    try:
        yield t
        assert not t.unexpected(), f"the browser console had errors: {t.unexpected()}"
    finally:
        try:
            t.page.screenshot(path=str(screenshots / f"{request.node.name}.png"), full_page=True)
        finally:
            t.context.close()
