"""Build the Starlette application of a host.

Routes come from three places: the operations of every registered capability (generated
here), the capability catalogue and documents (models, openapi.json, docs, redoc), and the
``register_routes`` hook (the core's own health, files, jobs and memory endpoints are default
plugins using it). Errors of every kind leave as the same JSON shape.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from functools import partial

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .errors import KiapiError, NotFound, StartupError
from .host import Host
from .http.auth import BearerAuth
from .http.body import BodyGate, BodyTimeout
from .http.guard import RequestGuard
from .http.methods import EXPOSED_HEADERS, method_not_allowed
from .http.observe import ObserveRequests
from .http.operations import operation_route
from .http.responses import JSONResponse, error_response
from .http.routing import IndexedRouter
from .openapi import pages
from .openapi.generate import capability_document
from .openapi.root import root_document
from .registry import Capability
from .settings import DEMO_NOTE
from .ui.routes import routes as ui_routes
from .webhooks.request import document_webhook_fields
from .weights.presence import model_readiness

log = logging.getLogger("kiapi.http")


def build_app(host: Host) -> Starlette:
    """The ASGI app serving ``host``; its lifespan starts and stops the host."""
    routes: list[BaseRoute] = [
        Route("/openapi.json", partial(_root_openapi, host), methods=["GET"], include_in_schema=False),
        Route("/docs", partial(_swagger, "/openapi.json", "kiapi"), methods=["GET"]),
        Route("/redoc", partial(_redoc, "/openapi.json", "kiapi"), methods=["GET"]),
        Mount(pages.STATIC_PREFIX, app=StaticFiles(directory=pages.STATIC_DIR), name="static"),
        *ui_routes(),
    ]
    for capability in host.registry:
        routes += _capability_routes(host, capability)
    for extra in host.plugin_routes.values():  # collected and checked per plugin by build_host
        routes += extra
    _check_unique(routes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await host.start()
        try:
            yield
        finally:
            await host.stop()

    app = Starlette(
        routes=routes,
        middleware=_middleware(host),
        lifespan=lifespan,
        exception_handlers={KiapiError: _kiapi_error, HTTPException: _http_error, Exception: _unexpected},
    )
    # A redirect to the slash-less path would be built from the Host header; a 404 with a
    # hint says the same without echoing anything (see _http_error).
    app.router = IndexedRouter(routes, redirect_slashes=False, lifespan=lifespan)
    app.state.host = host
    app.state.body_gate = BodyGate()
    return app


def _middleware(host: Host) -> list[Middleware]:
    """Outermost first: metrics and the access log (they see every answer), Host/Origin
    checks, CORS for listed origins (its preflights carry no token), body timeouts, then the
    bearer token (``/metrics`` open to loopback with KIAPI_METRICS_LOOPBACK_OPEN)."""
    settings = host.settings
    middleware = [Middleware(ObserveRequests, observe=host.metrics.on_http),
                  Middleware(RequestGuard, bind_host=settings.host, allowed_hosts=settings.allowed_hosts,
                             cors_origins=settings.cors_origins)]
    if settings.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Range", "If-None-Match",
                           "Last-Event-ID"],
            expose_headers=EXPOSED_HEADERS, max_age=600))
    middleware.append(Middleware(BodyTimeout, timeout_s=settings.body_timeout_s))
    if settings.auth_token:
        loopback = frozenset({"/metrics"}) if settings.metrics_loopback_open else frozenset()
        middleware.append(Middleware(BearerAuth, token=settings.auth_token, loopback_paths=loopback))
    return middleware


def _capability_routes(host: Host, capability: Capability) -> list[BaseRoute]:
    prefix = capability.prefix
    registered = next(r for r in host.registry.registered() if r.capability is capability)
    document = document_webhook_fields(capability_document(
        capability, version=capability.version, extra_routes=host.plugin_routes.get(registered.plugin, ())))

    async def models(request: Request) -> Response:
        # Extension fields (clients written against the spec ignore them): whether the weights
        # are there (`kiapi activate` otherwise), the quantization the model is kept at (and who
        # chose it: a setting or the memory budget), and in demo mode that outputs are noise.
        specs = msgspec.to_builtins(host.registry.model_specs(capability.name))
        ready = await model_readiness(host, capability)
        for spec, model in zip(specs, capability.models, strict=True):
            spec["ready"] = ready[spec["name"]]
            if model.weights_gib:
                spec["resident_quantize"] = model.resident_quantize
                spec["resident_quantize_chosen_by"] = (model.info or {}).get("resident_quantize_chosen_by")
            if host.settings.demo:
                spec["demo"] = DEMO_NOTE
        return JSONResponse(specs)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    routes: list[BaseRoute] = [operation_route(capability, op) for op in capability.operations]
    routes += [
        Route(f"{prefix}/models", models, methods=["GET"]),
        Route(f"{prefix}/openapi.json", openapi, methods=["GET"]),
        Route(f"{prefix}/docs", partial(_swagger, f"{prefix}/openapi.json", capability.title), methods=["GET"]),
        Route(f"{prefix}/redoc", partial(_redoc, f"{prefix}/openapi.json", capability.title), methods=["GET"]),
    ]
    return routes


async def _root_openapi(host: Host, request: Request) -> Response:
    return JSONResponse(root_document(host))


async def _swagger(openapi_url: str, title: str, request: Request) -> Response:
    return _page(pages.swagger_ui_html(openapi_url, title))


async def _redoc(openapi_url: str, title: str, request: Request) -> Response:
    return _page(pages.redoc_html(openapi_url, title))


def _page(html: str) -> Response:
    """A docs page that may run only its own scripts and never be framed (clickjacking)."""
    return HTMLResponse(html, headers=pages.security_headers(html))


async def _kiapi_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KiapiError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        path = request.url.path
        hint = f"; did you mean {path.rstrip('/')}?" if path != "/" and path.endswith("/") else ""
        return error_response(NotFound(f"no endpoint at {path}{hint}; see GET /openapi.json"))
    if exc.status_code == 405:
        return error_response(method_not_allowed(request))
    error = KiapiError(str(exc.detail), code=f"http_{exc.status_code}", headers=dict(exc.headers or {}))
    error.status = exc.status_code
    return error_response(error)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(KiapiError(f"internal error: {exc.__class__.__name__}: {exc}"))


def _check_unique(routes: list[BaseRoute]) -> None:
    """Starlette picks the first matching route silently; a clash must stop start-up instead."""
    seen: dict[tuple[str, str], str] = {}
    for route in routes:
        if isinstance(route, Route):
            for method in route.methods or ["*"]:
                key = (route.path, method)
                if key in seen:
                    raise StartupError(f"route {method} {route.path} is declared twice")
                seen[key] = route.name
