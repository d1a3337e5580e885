"""``GET /health``: liveness plus what an operator needs at a glance; ``GET /metrics``: the
host's Prometheus metrics (text exposition format)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..hookspecs import hookimpl
from ..http.auth import AUTHENTICATED
from ..http.responses import JSONResponse
from ..weights import model_readiness


async def health(request: Request) -> JSONResponse:
    host = request.app.state.host
    if request.scope.get(AUTHENTICATED) is False:
        # Liveness stays open without the token; the rest (jobs, plugins) needs it.
        return JSONResponse({"status": "ok", "version": host.version})
    capabilities = []
    for capability in host.registry:
        ready = await model_readiness(host, capability)
        models = [{"name": m.name, "default": m.default, "ready": ready[m.name]} for m in capability.models]
        capabilities.append({"name": capability.name, "domain": capability.domain,
                             "title": capability.title, "openapi": f"{capability.prefix}/openapi.json",
                             "models": models})
    errors = [{"name": p.name, "distribution": p.distribution, "error": p.error}
              for p in host.plugins if p.error]
    return JSONResponse({
        "status": "ok",
        "version": host.version,
        "demo": host.settings.demo,
        "plugins": [{"name": p.name, "distribution": p.distribution, "version": p.version,
                     "capabilities": p.capabilities, "error": p.error}
                    for p in host.plugins if not p.default],
        "plugin_errors": errors,
        "capabilities": capabilities,
        "queue": host.jobs.stats(),
        "memory": host.models.stats(),
    })


async def metrics(request: Request) -> Response:
    host = request.app.state.host
    body = await asyncio.to_thread(host.metrics.render)  # reads the disk for storage figures
    return Response(body, media_type=host.metrics.content_type)


@hookimpl
def register_routes(host):
    return [Route("/health", health, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]
