"""Who may use `flota dashboard`, against the real server: no token, a wrong token, a
cross-site POST (a foreign Origin, no CSRF token, a real browser's form from another
origin), a foreign Host, a non-loopback address without --public, and HTTPS with a
certificate the fleet's CA signed."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from playwright.sync_api import expect

from tests.dashboard.conftest import Dashboard
from tests.fleet import Fleet

pytestmark = pytest.mark.timeout(180)


def _request(
    d: Dashboard, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read().decode()
    finally:
        conn.close()


def _cookie(d: Dashboard) -> str:
    return f"flota_dashboard_{d.port}={d.token}"


def _csrf(d: Dashboard) -> str:
    status, _, body = _request(d, "GET", "/api/session", headers={"Cookie": _cookie(d)})
    assert status == 200, body
    return str(json.loads(body)["csrf"])


def _drain_headers(d: Dashboard, **extra: str) -> dict[str, str]:
    return {"Cookie": _cookie(d), "Content-Type": "application/json", **extra}


def test_no_token_and_a_wrong_token_are_refused(dashboard: Dashboard) -> None:
    status, headers, body = _request(dashboard, "GET", "/")
    assert status == 401
    assert body.strip() == (
        "flota dashboard: this page needs its access token: open the URL `flota dashboard` printed"
    )
    for path in ("/api/events", "/api/session", "/static/app.js"):
        status, _, body = _request(dashboard, "GET", path)
        assert status == 401, path
    assert json.loads(_request(dashboard, "GET", "/api/session")[2])["error"].startswith("flota dashboard: ")

    status, _, body = _request(dashboard, "GET", "/?token=nope")
    assert status == 403 and "wrong access token" in body
    status, _, body = _request(
        dashboard, "GET", "/", headers={"Cookie": f"flota_dashboard_{dashboard.port}=nope"}
    )
    assert status == 403 and "wrong access token" in body

    status, headers, _ = _request(dashboard, "GET", f"/?token={dashboard.token}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    status, headers, body = _request(dashboard, "GET", "/", headers={"Cookie": _cookie(dashboard)})
    assert status == 200 and "<title>flota</title>" in body
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "access-control-allow-origin" not in headers


def test_cross_site_posts_are_refused(dashboard: Dashboard, dash_fleet: Fleet) -> None:
    d = dashboard
    csrf = _csrf(d)
    body = {"node": "beta"}
    refused = [
        (
            _drain_headers(d, **{"X-Flota-CSRF": csrf, "Origin": "http://evil.example"}),
            "Origin 'http://evil.example'",
        ),
        (
            _drain_headers(d, **{"X-Flota-CSRF": csrf, "Origin": f"http://127.0.0.1:{d.port + 1}"}),
            "is not this",
        ),
        (_drain_headers(d, **{"X-Flota-CSRF": csrf, "Sec-Fetch-Site": "same-site"}), "Sec-Fetch-Site"),
        (_drain_headers(d, Origin=d.origin), "no valid X-Flota-CSRF header"),
        (
            _drain_headers(d, **{"X-Flota-CSRF": "guessed", "Origin": d.origin}),
            "no valid X-Flota-CSRF header",
        ),
    ]
    for headers, why in refused:
        status, _, text = _request(d, "POST", "/api/drain", body, headers)
        assert status == 403, (headers, text)
        error = json.loads(text)["error"]
        assert error.startswith("flota dashboard: cross-site request refused: ") and why in error, error
    status, _, text = _request(d, "PUT", "/api/drain", body, _drain_headers(d, **{"X-Flota-CSRF": csrf}))
    assert status == 403 and "PUT is not allowed" in text
    assert dash_fleet.nodes()["beta"]["state"] == "online"  # none of them drained it

    # The page's own request, for contrast: the same call with its token and origin works.
    headers = _drain_headers(d, **{"X-Flota-CSRF": csrf, "Origin": d.origin, "Sec-Fetch-Site": "same-origin"})
    status, _, text = _request(d, "POST", "/api/drain", body, headers)
    assert status == 200, text
    try:
        assert json.loads(text)["node"]["state"] == "draining"
    finally:
        status, _, text = _request(d, "POST", "/api/drain", {"node": "beta", "undo": True}, headers)
        assert status == 200, text


def test_a_foreign_host_header_is_refused(dashboard: Dashboard) -> None:
    """A site whose DNS name was rebound to 127.0.0.1 sends its own name as the Host."""
    status, _, text = _request(
        dashboard, "GET", "/api/session", headers={"Cookie": _cookie(dashboard), "Host": "evil.example"}
    )
    assert status == 403 and "unexpected Host" in text
    status, _, text = _request(dashboard, "GET", "/api/session", headers={"Cookie": _cookie(dashboard)})
    assert status == 200


def test_reads_from_another_origin_are_refused(dashboard: Dashboard) -> None:
    """A page of another origin on this machine gets the cookie along (same site), but the
    API does not answer it; the page's own reads (same-origin) are answered."""
    cookie = {"Cookie": _cookie(dashboard)}
    for site in ("same-site", "cross-site"):
        status, _, text = _request(
            dashboard, "GET", "/api/session", headers={**cookie, "Sec-Fetch-Site": site}
        )
        assert status == 403 and f"Sec-Fetch-Site is '{site}'" in text, text
    status, _, _ = _request(
        dashboard, "GET", "/api/session", headers={**cookie, "Sec-Fetch-Site": "same-origin"}
    )
    assert status == 200


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another origin on this machine (another port): a page whose form posts to the dashboard."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        page = (
            "<!doctype html><form method=post enctype=text/plain "
            f'action="{self.target}/api/drain"><input name=\'{{"node":"beta","x":"\' value=\'"}}\'></form>'
            "<script>document.forms[0].submit()</script>"
        )
        data = page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def attacker(dashboard: Dashboard) -> Iterator[str]:
    _Attacker.target = dashboard.origin
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_browser_form_from_another_origin_is_refused(
    browser: Any, dashboard: Dashboard, dash_fleet: Fleet, attacker: str
) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(dashboard.url)  # the user's session: the cookie is set
        expect(page.locator("#link")).to_have_text("live", timeout=15_000)
        page.goto(attacker)  # same site (127.0.0.1), so the Strict cookie goes along; another origin
        expect(page.locator("body")).to_contain_text("cross-site request refused", timeout=15_000)
        assert dash_fleet.nodes()["beta"]["state"] == "online"
    finally:
        context.close()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--listen", "0.0.0.0:0"], "--listen 0.0.0.0:0 is not a loopback address"),
        (
            ["--listen", "[::]:0"],
            "is not a loopback address: anyone who reaches it could try the page; add --public",
        ),
        (["--listen", "example.org:8000"], "--listen takes an IP address"),
        (["--listen", "127.0.0.1:99999"], "malformed --listen"),
        (["--cert", "c.pem"], "--cert and --key go together"),
        (["--cert", "missing.pem", "--key", "missing.pem"], "cannot serve HTTPS with --cert missing.pem"),
    ],
)
def test_bad_addresses_and_certificates_are_one_line(dash_fleet: Fleet, args: list[str], said: str) -> None:
    result = dash_fleet.flota("dashboard", *args, timeout=30)
    assert result.returncode == 2, result
    assert result.stderr.startswith("flota: ") and said in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and not result.stdout


def test_without_admin_credentials_it_says_so(dash_fleet: Fleet, tmp_path: Path) -> None:
    result = dash_fleet.flota(
        "dashboard", "--listen", "127.0.0.1:0", env={"FLOTA_HOME": str(tmp_path)}, timeout=30
    )
    assert result.returncode == 3
    assert result.stderr.startswith("flota: no admin credentials in ")


def test_a_port_in_use_is_one_line(dash_fleet: Fleet) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = dash_fleet.flota("dashboard", "--listen", f"127.0.0.1:{port}", timeout=30)
    assert result.returncode == 2
    assert result.stderr == f"flota: cannot listen on 127.0.0.1:{port}: port already in use\n"


def test_public_serves_https_with_a_certificate_from_the_fleets_ca(dash_fleet: Fleet) -> None:
    d = Dashboard(dash_fleet, "--public")
    try:
        assert d.ready["https"] and d.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(dash_fleet.home / "admin" / "ca.pem"))
        conn = http.client.HTTPSConnection("127.0.0.1", d.port, context=trust, timeout=30)
        try:
            conn.request("GET", f"/?token={d.token}")  # verified: the fleet's CA, the name 127.0.0.1
            reply = conn.getresponse()
            assert reply.status == 303
            assert "Secure" in (reply.getheader("Set-Cookie") or "")
            reply.read()
            assert conn.sock is not None
            cert = x509.load_der_x509_certificate(conn.sock.getpeercert(binary_form=True) or b"")
        finally:
            conn.close()
        ca = x509.load_pem_x509_certificate((dash_fleet.home / "admin" / "ca.pem").read_bytes())
        assert cert.issuer == ca.subject
        # Plain HTTP on that port gets nowhere.
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
            plain.request("GET", "/")
            plain.getresponse()
    finally:
        assert d.stop() == 0  # SIGTERM: a clean stop


def test_public_without_the_fleets_ca_says_what_to_give(dash_fleet: Fleet, tmp_path: Path) -> None:
    """On a machine with admin credentials but no coordinator (no CA key), --public needs --cert/--key."""
    (tmp_path / "admin").mkdir()
    for name in ("ca.pem", "key.pem", "cert.pem", "coordinator"):
        (tmp_path / "admin" / name).write_bytes((dash_fleet.home / "admin" / name).read_bytes())
    result = dash_fleet.flota("dashboard", "--public", env={"FLOTA_HOME": str(tmp_path)}, timeout=30)
    assert result.returncode == 2
    assert "HTTPS needs a certificate: this machine has no fleet CA" in result.stderr
    assert "give --cert PEM --key PEM" in result.stderr
