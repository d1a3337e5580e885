"""``GET /v1/memory`` and the admin load/unload endpoints, on a minimal app with a fake worker."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request

from kiapi_core.errors import KiapiError
from kiapi_core.http.responses import error_response
from kiapi_core.memory import ModelManager
from kiapi_core.memory.routes import routes
from kiapi_core.registry import Capability, Model, Registry
from kiapi_core.settings import Settings


class Jobs:
    """Stands in for the job manager's model thread."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-worker")
        self.threads: set[str] = set()

    async def run_on_worker(self, fn: Any) -> Any:
        def call() -> Any:
            self.threads.add(threading.current_thread().name)
            return fn()
        return await asyncio.wrap_future(self.executor.submit(call))


class Host:
    def __init__(self, tmp_path: Path, *, budget: float) -> None:
        self.closed: list[str] = []

        class Runtime:
            def close(inner) -> None:
                self.closed.append("x")

        def load(**_: Any) -> Runtime:
            return Runtime()

        model = Model(name="turbo", aliases=("t",), default=True, loader=load,  # type: ignore[arg-type]
                      resident_quantize=8, weights_gib={8: 6.0})
        self.registry = Registry()
        self.registry.add(Capability(name="ernie", domain="image", title="E", models=(model,)),
                          plugin="ernie", distribution="kiapi-ernie")
        self.models = ModelManager(settings=Settings(memory_limit_gb=budget, data_dir=str(tmp_path)),
                                   registry=self.registry, plugin_settings=lambda f: None,
                                   cache_dir=lambda f: tmp_path, demo=False)
        self.jobs = Jobs()


def make_client(host: Host) -> httpx.AsyncClient:
    async def on_error(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, KiapiError)
        return error_response(exc)

    app = Starlette(routes=routes(), exception_handlers={KiapiError: on_error})
    app.state.host = host
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_memory_stats_load_and_unload(tmp_path: Path) -> None:
    host = Host(tmp_path, budget=10.0)
    async with make_client(host) as client:
        stats = (await client.get("/v1/memory")).json()
        assert stats["budget_gb"] == 10.0 and stats["resident"] == []
        response = await client.post("/v1/memory/models/ernie/T/load")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "loaded" and body["model"] == "turbo"
        assert body["resident"]["size_gb"] == 6.0
        assert [r["model"] for r in body["memory"]["resident"]] == ["turbo"]
        assert host.jobs.threads and all(t.startswith("model-worker") for t in host.jobs.threads)
        response = await client.post("/v1/memory/models/ernie/turbo/unload")
        assert response.json()["status"] == "unloaded" and host.closed == ["x"]
        assert (await client.post("/v1/memory/models/ernie/turbo/unload")).json()["status"] == "not_loaded"
    host.jobs.executor.shutdown()


async def test_memory_admin_errors(tmp_path: Path) -> None:
    host = Host(tmp_path, budget=4.0)
    async with make_client(host) as client:
        response = await client.post("/v1/memory/models/ernie/turbo/load")
        assert response.status_code == 503
        assert response.json()["code"] == "memory_budget" and response.json()["needed_gb"] == 6.0
        response = await client.post("/v1/memory/models/nope/turbo/load")
        assert response.status_code == 404
        response = await client.post("/v1/memory/models/ernie/zzz/load")
        assert response.status_code == 404 and response.json()["code"] == "not_found" and response.json()["valid"]
    assert host.models.resident_keys() == []
    host.jobs.executor.shutdown()
