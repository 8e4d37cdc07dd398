"""Who may use the dashboard, and how a page proves it (Jupyter's model).

- `flota dashboard` makes a random token and prints the page's URL with it. The first
  request with `?token=` gets the token back as a cookie (HttpOnly, SameSite=Strict, Secure
  over HTTPS, named after the port: cookies ignore ports, so two dashboards on one host
  keep theirs apart) and is redirected to the same page without it, so it stays in no
  history or address bar. Every request needs that cookie: without it 401, with a wrong
  token 403, each with one line saying why.
- On a loopback address the Host header must name that address (or localhost): a page
  of another site that rebinds its DNS name to 127.0.0.1 is refused.
- A request that changes something is a POST, whose Origin (when the browser sends one)
  is this dashboard's own, whose Sec-Fetch-Site (likewise) is same-origin, and that
  carries the page's CSRF token in the X-Flota-CSRF header. Pages of other sites cannot
  read that token: there is no CORS, and a page on another port of this host is another
  origin (though the same "site" for SameSite cookies, hence the token). Reads under
  /api/ from another origin are refused too (Sec-Fetch-Site).
- Every answer forbids framing and has a strict Content-Security-Policy: scripts and
  styles from this server only, no inline script, nothing from elsewhere.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

__all__ = ["CSRF_HEADER", "Access"]

CSRF_HEADER = "X-Flota-CSRF"
_SAFE = ("GET", "HEAD")
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refuse(request: web.Request, status: int, message: str) -> web.Response:
    line = f"flota dashboard: {message}"
    if request.path.startswith("/api/"):
        return web.json_response({"error": line}, status=status)
    return web.Response(text=line + "\n", status=status, content_type="text/plain")


class Access:
    def __init__(self, port: int, secure: bool, loopback_host: str | None, token: str | None = None) -> None:
        """`loopback_host`: the IP literal listened on when it is a loopback one (the Host
        header is then checked); None for a public address."""
        self.token = token or secrets.token_urlsafe(32)
        self.csrf = secrets.token_urlsafe(32)
        self.cookie = f"flota_dashboard_{port}"
        self.secure = secure
        self.port = port
        self._hosts: set[str] | None = None
        if loopback_host is not None:
            shown = f"[{loopback_host}]" if ":" in loopback_host else loopback_host
            self._hosts = {f"{h}:{port}" for h in (*_LOOPBACK_NAMES, shown)}

    def url(self, host: str, path: str = "/") -> str:
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{shown}:{self.port}{path}?{urlencode({'token': self.token})}"

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await self._guard(request, handler)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._hosts is not None and request.host not in self._hosts:
            return _refuse(request, 403, f"unexpected Host {request.host[:100]!r}: open the URL it printed")
        if "token" in request.query:
            if not self._matches(request.query["token"]):
                return _refuse(request, 403, "wrong access token: open the URL `flota dashboard` printed")
            rest = [(k, v) for k, v in request.query.items() if k != "token"]
            target = request.path + (f"?{urlencode(rest)}" if rest else "")
            found = web.HTTPSeeOther(target)
            found.set_cookie(
                self.cookie, self.token, httponly=True, samesite="Strict", secure=self.secure, path="/"
            )
            return found
        cookie = request.cookies.get(self.cookie)
        if cookie is None:
            return _refuse(
                request, 401, "this page needs its access token: open the URL `flota dashboard` printed"
            )
        if not self._matches(cookie):
            return _refuse(request, 403, "wrong access token: open the URL `flota dashboard` printed")
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if request.path.startswith("/api/") and fetch_site not in (None, "same-origin"):
            return _refuse(request, 403, f"cross-site request refused: Sec-Fetch-Site is {fetch_site[:40]!r}")
        if request.method not in _SAFE:
            why = self._cross_site(request)
            if why:
                return _refuse(request, 403, f"cross-site request refused: {why}")
        return await handler(request)

    def _cross_site(self, request: web.Request) -> str:
        """Why a state-changing request is not the page's own; "" when it is."""
        if request.method != "POST":
            return f"{request.method} is not allowed (actions are POST)"
        origin = request.headers.get("Origin")
        own = f"{'https' if self.secure else 'http'}://{request.host}"
        if origin is not None and origin != own:
            return f"Origin {origin[:100]!r} is not this dashboard"
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site is not None and fetch_site != "same-origin":
            return f"Sec-Fetch-Site is {fetch_site[:40]!r}"
        given = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.csrf.encode()):
            return f"no valid {CSRF_HEADER} header (the dashboard's own page sends it)"
        return ""
