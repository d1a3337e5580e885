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
from ..weights.presence import readiness_of_all


async def health(request: Request) -> JSONResponse:
    host = request.app.state.host
    # "degraded": serving, but a plugin failed and was skipped, or a service the host needs
    # (a cluster's database) is out of reach; details need the token.
    problems = host.jobs.problems() if hasattr(host.jobs, "problems") else []
    status = "degraded" if host.plugin_errors or problems else "ok"
    if request.scope.get(AUTHENTICATED) is False:
        # Liveness stays open without the token; the rest (jobs, plugins) needs it.
        return JSONResponse({"status": status, "version": host.version})
    capabilities = []
    readiness = await readiness_of_all(host)  # one thread hop at most, not one per capability
    for capability in host.registry:
        ready = readiness[capability.name]
        models = [{"name": m.name, "default": m.default, "ready": ready[m.name]} for m in capability.models]
        capabilities.append({"name": capability.name, "domain": capability.domain,
                             "title": capability.title, "openapi": f"{capability.prefix}/openapi.json",
                             "models": models})
    errors = [{"name": p.name, "distribution": p.distribution, "error": p.error}
              for p in host.plugins if p.error]
    return JSONResponse({
        "status": status,
        "version": host.version,
        "demo": host.settings.demo,
        "plugins": [{"name": p.name, "distribution": p.distribution, "version": p.version,
                     "capabilities": p.capabilities, "error": p.error}
                    for p in host.plugins if not p.default],
        "plugin_errors": errors,
        "problems": problems,
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
