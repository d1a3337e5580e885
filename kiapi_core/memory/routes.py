"""Memory endpoints: ``GET /v1/memory`` and the admin load/unload of a model.

Authentication is the app's middleware's job (``KIAPI_AUTH_TOKEN`` covers these like every
endpoint but ``/health``). Loading and unloading touch models, so they never run on the event
loop: they are queued on the model worker thread through ``host.jobs.run_on_worker(fn)``, which
also serialises them with jobs (a load never races a running job's accounting).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from ..errors import NotFound, Unavailable, UnknownModel
from ..http.responses import JSONResponse


async def memory_stats(request: Request) -> JSONResponse:
    """The budget, resident models, live reservations, the running job and observations."""
    return JSONResponse(request.app.state.host.models.stats())


async def load_model(request: Request) -> JSONResponse:
    """Load (warm) a model resident, admitted like a job: may evict idle models, may 503."""
    host = request.app.state.host
    family, name = _resolve(host, request)
    resident = await _on_worker(host, lambda: host.models.warm(family, name))
    return JSONResponse({"status": "loaded", "family": family, "model": name, "resident": resident,
                         "memory": host.models.stats()})


async def unload_model(request: Request) -> JSONResponse:
    """Unload a model's idle resident instances (a model in use by a running job stays)."""
    host = request.app.state.host
    family, name = _resolve(host, request)
    unloaded = await _on_worker(host, lambda: host.models.unload(family, name))
    return JSONResponse({"status": "unloaded" if unloaded else "not_loaded", "family": family,
                         "model": name, "unloaded": unloaded, "memory": host.models.stats()})


def _resolve(host: Any, request: Request) -> tuple[str, str]:
    family = request.path_params["family"]
    if family not in host.registry:
        known = ", ".join(c.name for c in host.registry) or "none installed"
        raise NotFound(f"no capability {family!r}; capabilities: {known}")
    try:
        model = host.registry.resolve_model(family, request.path_params["model"])
    except UnknownModel as exc:  # a path names a resource: unknown is 404, not a bad body (400)
        raise NotFound(exc.detail, valid=exc.extra.get("valid")) from None
    return family, model.name


async def _on_worker(host: Any, fn: Any) -> Any:
    run_on_worker = getattr(host.jobs, "run_on_worker", None)
    if run_on_worker is None:
        # Never fall back to the event loop or a second thread: MLX work must stay serialised.
        raise Unavailable("the model worker cannot take admin work in this host version")
    return await run_on_worker(fn)


def routes() -> list[Route]:
    return [
        Route("/v1/memory", memory_stats, methods=["GET"]),
        Route("/v1/memory/models/{family}/{model}/load", load_model, methods=["POST"]),
        Route("/v1/memory/models/{family}/{model}/unload", unload_model, methods=["POST"]),
    ]
