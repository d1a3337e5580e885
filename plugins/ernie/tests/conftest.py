"""Fixtures for the ernie plugin tests: demo-mode test hosts and the core's handler harness.

Handlers run through :class:`kiapi_core.testing.HandlerHarness` (``ernie``): requests are
validated as ``POST`` would (prepare, FileRef resolution, check), then the handler runs on the
test thread with the core's real job context; the tiny resident models stay loaded in the
session host between tests. Only the image/ZIP builders are plugin-specific. Every fixture is
prefixed ``ernie``.
"""

from __future__ import annotations

import os

for _key, _value in (("MLX_DISABLE_COMPILE", "1"), ("HF_HUB_OFFLINE", "1"), ("TQDM_DISABLE", "1"),
                     ("TRANSFORMERS_VERBOSITY", "error")):
    os.environ.setdefault(_key, _value)

import io
import itertools
import types
import zipfile
from pathlib import Path
from typing import Any

import pytest

from kiapi_core.testing import HandlerHarness, build_test_host

_hosts = itertools.count(1)


@pytest.fixture(scope="session")
def ernie_host(tmp_path_factory):
    """The session's demo-mode host (default settings); its resident tiny models are shared."""
    return build_test_host(tmp_path_factory.mktemp("ernie-host"), plugins=["kiapi_ernie"])


@pytest.fixture(scope="session")
def ernie(ernie_host) -> HandlerHarness:
    """The handler harness on :func:`ernie_host`."""
    return HandlerHarness(ernie_host, "ernie")


@pytest.fixture(scope="session")
def ernie_cache_dir(ernie_host) -> Path:
    from kiapi_ernie.tiny import ensure_tiny_dir

    cache = ernie_host.cache_dir("ernie")
    ensure_tiny_dir(cache)
    return cache


@pytest.fixture
def ernie_files(ernie):
    """``ernie_files(bytes, filename=..., content_type=...) -> StoredFile`` in the session host's store."""
    return ernie.store


def ernie_test_host(root: Path, *, demo: bool = True, max_image_pixels: int = 100_000_000, **settings: Any):
    """A fresh host with these core settings and ``ernie`` plugin settings."""
    return build_test_host(root / f"host-{next(_hosts)}", plugins=["kiapi_ernie"], demo=demo,
                           max_image_pixels=max_image_pixels, plugin_settings={"ernie": settings})


def ernie_png(size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def ernie_zip(entries: dict[str, bytes | str], **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def ernie_helpers(tmp_path):
    """``png``/``zip`` builders and ``host(**settings)`` / ``harness(**settings)`` for other settings."""

    def host(**settings: Any):
        return ernie_test_host(tmp_path, **settings)

    def harness(**settings: Any) -> HandlerHarness:
        return HandlerHarness(host(**settings), "ernie")

    return types.SimpleNamespace(png=ernie_png, zip=ernie_zip, host=host, harness=harness)
