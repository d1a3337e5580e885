"""Test helpers for kiapi and its plugins (importable without pytest).

``build_test_host`` makes an isolated host (its own plugin manager, data directory and worker
thread; entry points not loaded unless asked), and ``client`` runs its app with the lifespan
over an in-process HTTP client that knows how to upload files and wait for jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec

from ..host import Host, build_host
from ..settings import Loaded, Settings

__all__ = ["KiapiClient", "LifespanRunner", "build_test_host", "client"]


def build_test_host(data_dir: str | Path, *, plugins: Sequence[Any] = (), load_entrypoints: bool = False,
                    plugin_settings: Mapping[str, Mapping[str, Any]] | None = None, **settings: Any) -> Host:
    """A host for one test: strict plugin loading, demo mode on, state under ``data_dir``.

    ``settings`` are core settings (``demo=False``, ``max_image_pixels=...``);
    ``plugin_settings`` maps a capability to its settings, as the config file's table would
    (``{"ernie": {"max_steps": 10}}``). The environment is not read.
    """
    values: dict[str, Any] = {"data_dir": str(data_dir), "strict_plugins": True, "demo": True}
    values.update(settings)
    tables = {name: dict(table) for name, table in (plugin_settings or {}).items()}
    loaded = Loaded(settings=msgspec.convert(values, Settings), sources={}, config_file=None, config=tables,
                    env={})
    return build_host(loaded, plugins=plugins, load_entrypoints=load_entrypoints)


class LifespanRunner:
    """Runs an ASGI app's lifespan (httpx's ASGITransport does not)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._receive: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._send: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LifespanRunner:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._task = asyncio.create_task(self.app(scope, self._receive.get, self._send.put))
        await self._receive.put({"type": "lifespan.startup"})
        message = await self._send.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"lifespan startup failed: {message.get('message')}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._receive.put({"type": "lifespan.shutdown"})
        message = await self._send.get()
        if self._task is not None:
            await self._task
        if message["type"] != "lifespan.shutdown.complete":
            raise RuntimeError(f"lifespan shutdown failed: {message.get('message')}")


class KiapiClient(httpx.AsyncClient):
    """An httpx client for a host's app, with helpers for files and jobs."""

    host: Host

    async def upload(self, data: bytes | Path, filename: str = "input.bin",
                     content_type: str = "application/octet-stream") -> str:
        """Store ``data`` through ``POST /v1/files``; returns the file id."""
        content = data.read_bytes() if isinstance(data, Path) else data
        response = await self.post("/v1/files", files={"file": (filename, content, content_type)})
        assert response.status_code in (200, 201), response.text
        return response.json()["file_id"]

    async def wait_job(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Long-poll ``GET /v1/jobs/{id}`` until the job ends; returns its JSON."""
        deadline = time.monotonic() + timeout
        while True:
            response = await self.get(f"/v1/jobs/{job_id}", params={"wait": 5})
            assert response.status_code == 200, response.text
            job = response.json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")


@contextlib.asynccontextmanager
async def client(host: Host, *, headers: dict[str, str] | None = None,
                 timeout: float = 300.0) -> AsyncIterator[KiapiClient]:
    """Serve ``host`` in-process (lifespan included) and yield a client for it."""
    from ..app import build_app

    app = build_app(host)
    async with LifespanRunner(app):
        transport = httpx.ASGITransport(app=app)
        async with KiapiClient(transport=transport, base_url="http://localhost", headers=headers,
                               timeout=timeout) as http:
            http.host = host
            yield http
