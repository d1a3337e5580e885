"""``GET /health``: liveness plus what an operator needs at a glance; ``GET /metrics``: the
host's Prometheus metrics (text exposition format)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..hookspecs import hookimpl
from ..http.auth import AUTHENTICATED
from ..http.responses import JSONResponse
from ..weights.presence import checks_disk, readiness_of_all

_encoder = msgspec.json.Encoder()


class HealthBody:
    """The parts of ``/health`` that cannot change while the host runs (plugins, capabilities and,
    when no weights are read from disk, their readiness) are encoded once; each request adds the
    queue and memory figures. This is most of what made ``/health`` slower than a bare app."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self._static: dict[str, msgspec.Raw] | None = None
        self._capabilities: msgspec.Raw | None = None

    async def respond(self, request: Request) -> JSONResponse:
        host = self.host
        # "degraded": serving, but a plugin failed and was skipped, or a service the host needs
        # (a cluster's database) is out of reach; details need the token.
        problems = host.jobs.problems() if hasattr(host.jobs, "problems") else []
        status = "degraded" if host.plugin_errors or problems else "ok"
        if request.scope.get(AUTHENTICATED) is False:
            # Liveness stays open without the token; the rest (jobs, plugins) needs it.
            return JSONResponse({"status": status, "version": host.version})
        static = self._static or self._encode_static()
        capabilities = self._capabilities
        if capabilities is None:
            readiness = await readiness_of_all(host)  # one thread hop at most, not one per capability
            capabilities = msgspec.Raw(_encoder.encode(_capabilities(host, readiness)))
            # Demo models and weightless ones are always ready; others change with `kiapi activate`.
            if not any(checks_disk(m, host.settings.demo) for c in host.registry for m in c.models):
                self._capabilities = capabilities
        return JSONResponse({"status": status, "version": host.version, "demo": host.settings.demo,
                             **static, "problems": problems, "capabilities": capabilities,
                             "queue": host.jobs.stats(), "memory": host.models.stats()})

    def _encode_static(self) -> dict[str, msgspec.Raw]:
        plugins = self.host.plugins
        errors = [{"name": p.name, "distribution": p.distribution, "error": p.error} for p in plugins if p.error]
        listed = [{"name": p.name, "distribution": p.distribution, "version": p.version,
                   "capabilities": p.capabilities, "error": p.error} for p in plugins if not p.default]
        self._static = {"plugins": msgspec.Raw(_encoder.encode(listed)),
                        "plugin_errors": msgspec.Raw(_encoder.encode(errors))}
        return self._static


def _capabilities(host: Any, readiness: dict[str, dict[str, bool]]) -> list[dict[str, Any]]:
    capabilities = []
    for capability in host.registry:
        ready = readiness[capability.name]
        models = [{"name": m.name, "default": m.default, "ready": ready[m.name]} for m in capability.models]
        capabilities.append({"name": capability.name, "domain": capability.domain,
                             "title": capability.title, "openapi": f"{capability.prefix}/openapi.json",
                             "models": models})
    return capabilities


async def metrics(request: Request) -> Response:
    host = request.app.state.host
    body = await asyncio.to_thread(host.metrics.render)  # reads the disk for storage figures
    return Response(body, media_type=host.metrics.content_type)


@hookimpl
def register_routes(host):
    return [Route("/health", HealthBody(host).respond, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]
