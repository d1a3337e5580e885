"""``GET /metrics``: the host's Prometheus metrics (text exposition format)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..hookspecs import hookimpl


async def metrics(request: Request) -> Response:
    host = request.app.state.host
    body = await asyncio.to_thread(host.metrics.render)  # reads the disk for storage figures
    return Response(body, media_type=host.metrics.content_type)


@hookimpl
def register_routes(host):
    return [Route("/metrics", metrics, methods=["GET"])]
