"""pytest fixtures for kiapi plugins and the core (registered through the ``pytest11`` entry point).

* ``kiapi_host_factory(plugins=[...], **settings)`` builds isolated hosts under ``tmp_path``;
* ``kiapi_client_factory(plugins=[...], **settings)`` is an async context manager yielding a
  :class:`~kiapi_core.testing.KiapiClient` with the app's lifespan running;
* ``kiapi_harness_factory(plugins=[...], capability=None, **settings)`` returns a
  :class:`~kiapi_core.testing.HandlerHarness` that runs one handler directly.

``settings`` are core settings, plus ``plugin_settings={"family": {...}}`` for plugins.

Nothing heavy is imported until a fixture is used.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest


@pytest.fixture
def kiapi_host_factory(tmp_path) -> Callable[..., Any]:
    from .helpers import build_test_host

    counter = itertools.count()

    def factory(plugins=(), **settings: Any):
        settings.setdefault("data_dir", str(tmp_path / f"kiapi-{next(counter)}"))
        return build_test_host(plugins=plugins, **settings)

    return factory


@pytest.fixture
def kiapi_client_factory(kiapi_host_factory) -> Callable[..., Any]:
    from .helpers import client

    @contextlib.asynccontextmanager
    async def factory(plugins=(), *, headers: dict[str, str] | None = None, **settings: Any) -> AsyncIterator[Any]:
        host = kiapi_host_factory(plugins=plugins, **settings)
        async with client(host, headers=headers) as http:
            yield http

    return factory


@pytest.fixture
def kiapi_harness_factory(kiapi_host_factory) -> Callable[..., Any]:
    from .handlers import HandlerHarness

    def factory(plugins=(), capability: str | None = None, **settings: Any) -> Any:
        return HandlerHarness(kiapi_host_factory(plugins=plugins, **settings), capability)

    return factory
