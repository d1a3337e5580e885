"""Fixtures for the seedvr2 plugin tests: a demo-mode test host and the core's handler harness.

Handlers run through :class:`kiapi_core.testing.HandlerHarness`: the request is validated as
``POST`` would, then ``upscale`` runs on the test thread with the core's real job context
(resident tiny runtimes kept by ``host.models`` for the session, transients freed after each
run, artifacts in the host's Files store). Only the image builder is plugin-specific.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest

from kiapi_core.files.models import StoredFile
from kiapi_core.testing import HandlerHarness, HandlerRun, Prepared, build_test_host, file_ref


class Upscales:
    """``upscale`` requests on one host: test images, prepare, run."""

    def __init__(self, harness: HandlerHarness) -> None:
        self.harness = harness
        self.host = harness.host

    def image(self, width: int, height: int, exif_orientation: int | None = None) -> StoredFile:
        """A deterministic gradient image (JPEG when an EXIF orientation is asked for), stored."""
        from PIL import Image

        seed = int(hashlib.sha1(f"{width}x{height}".encode()).hexdigest()[:6], 16)
        image = Image.new("RGB", (width, height))
        image.putdata([((x * 37 + seed) % 256, (y * 53) % 256, ((x + y) * 11) % 256)
                       for y in range(height) for x in range(width)])
        buffer = io.BytesIO()
        if exif_orientation is not None:
            exif = Image.Exif()
            exif[0x0112] = exif_orientation
            image.save(buffer, format="JPEG", exif=exif)
            return self.harness.store(buffer.getvalue(), f"in_{width}x{height}.jpg", "image/jpeg")
        image.save(buffer, format="PNG")
        return self.harness.store(buffer.getvalue(), f"in_{width}x{height}.png", "image/png")

    def prepare(self, body: dict[str, Any], image: StoredFile | None = None) -> Prepared:
        image = image or self.image(16, 16)
        return self.harness.prepare("upscale", {"image": file_ref(image), **body})

    def run(self, body: dict[str, Any], image: StoredFile | None = None,
            cancel_on: str | None = None) -> tuple[Any, HandlerRun]:
        """Run ``upscale``; returns ``(result Struct, run)``, raising what a failed run raised."""
        run = self.harness.run(self.prepare(body, image), cancel_on=cancel_on)
        fractions = [f for f, _ in run.events if f is not None]
        assert all(0.0 <= f < 1.0 for f in fractions), f"reported {fractions}: 1.0 only when done"
        return run.raise_for_status().returned, run


@pytest.fixture(scope="session")
def seedvr2_host(tmp_path_factory):
    """A demo-mode host whose resident tiny runtimes are shared by the whole session."""
    return build_test_host(tmp_path_factory.mktemp("seedvr2-host"), plugins=["kiapi_seedvr2"])


@pytest.fixture(scope="session")
def seedvr2_cache_dir(seedvr2_host) -> Path:
    """Where the tiny weights are written (once per test session)."""
    return seedvr2_host.cache_dir("seedvr2")


@pytest.fixture(scope="session")
def seedvr2(seedvr2_host) -> Upscales:
    return Upscales(HandlerHarness(seedvr2_host, "seedvr2"))


@pytest.fixture
def seedvr2_with(tmp_path):
    """``seedvr2_with(**plugin_settings) -> Upscales`` on a fresh host with those settings."""

    def make(**settings: Any) -> Upscales:
        host = build_test_host(tmp_path / f"host-{len(list(tmp_path.iterdir()))}", plugins=["kiapi_seedvr2"],
                               plugin_settings={"seedvr2": settings})
        return Upscales(HandlerHarness(host, "seedvr2"))

    return make
