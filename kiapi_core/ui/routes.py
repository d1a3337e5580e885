"""Routes of the web playground: ``GET /`` (the page) and the assets under ``/-/ui/``."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Directory of the packaged page and assets.
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: URL prefix the assets are served under (open without a token: they hold no data).
UI_PREFIX = "/-/ui"
CSP = "default-src 'self'; img-src 'self' blob: data:; base-uri 'none'; frame-ancestors 'none'"

#: Headers of the page and every asset.
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def page(request: Request) -> Response:
    """The single page; the operation, jobs, gallery and models views are its ``#/...`` routes."""
    body = (STATIC_DIR / "index.html").read_bytes()
    return Response(body, media_type="text/html; charset=utf-8", headers=HEADERS)


class _WithHeaders:
    """Adds :data:`HEADERS` to every response of the wrapped app (the static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() != "cache-control"]
                headers += [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def routes() -> list[BaseRoute]:
    return [
        Route("/", page, methods=["GET", "HEAD"]),
        Mount(UI_PREFIX, app=_WithHeaders(StaticFiles(directory=STATIC_DIR)), name="ui"),
    ]
