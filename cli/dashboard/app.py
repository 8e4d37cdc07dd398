"""The dashboard's web application: the page, its files, the API, behind the access check.

Everything the page needs ships in `static/` (plain JavaScript modules, one stylesheet, no
build step, nothing fetched from elsewhere), served as it is.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from cli.dashboard.api import Api
from cli.dashboard.auth import Access

__all__ = ["STATIC", "make_app"]

STATIC = Path(__file__).resolve().parent / "static"


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})


async def _favicon(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


def make_app(access: Access, api: Api) -> web.Application:
    app = web.Application(middlewares=[access.middleware], client_max_size=64 * 1024)
    app.add_routes(
        [
            web.get("/", _index),
            web.get("/favicon.ico", _favicon),
            *api.routes(),
            web.static("/static", STATIC, follow_symlinks=False),
        ]
    )
    return app
