"""Fixtures for the seedvr2 plugin tests: tiny real-mflux models and a fake job context.

The job manager is not needed to test the plugin: :class:`FakeJobContext` implements the
:class:`~kiapi_core.jobs.JobContext` ABC the way the host does (resident runtimes cached per
variant, other quantizations built transient and closed, progress monotonic and capped below
1.0, artifacts written to a temporary directory) and records everything for assertions.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from kiapi_core.errors import JobCanceled
from kiapi_core.files.models import FileRecord, StoredFile
from kiapi_core.jobs.context import JobContext
from kiapi_core.registry import Registry

_ids = itertools.count(1)


def stored_file(path: Path, content_type: str = "image/png") -> StoredFile:
    record = FileRecord(file_id=f"file_{next(_ids):016x}", filename=path.name, content_type=content_type,
                        size=path.stat().st_size, created_at=time.time())
    return StoredFile(record=record, path=path)


class FakeHost:
    """What prepare/check see of the host: settings, plugin settings, resident runtimes."""

    def __init__(self, cache_dir: Path, settings: Any = None, demo: bool = True) -> None:
        from kiapi_seedvr2.capability import build_capability
        from kiapi_seedvr2.settings import Seedvr2Settings

        self.settings = SimpleNamespace(demo=demo)
        self.capability = build_capability(demo=demo)
        self.registry = Registry()
        self.registry.add(self.capability, plugin="seedvr2", distribution="kiapi-seedvr2")
        self.seedvr2_settings = settings or Seedvr2Settings()
        self.cache_dir = cache_dir
        self.resident: dict[str, Any] = {}
        self.loads: list[tuple[str, int | None, bool]] = []  # (variant, quantize, transient)

    def plugin_settings(self, family: str) -> Any:
        assert family == "seedvr2"
        return self.seedvr2_settings

    def load(self, model: Any, quantize: int | None, transient: bool) -> Any:
        from kiapi_seedvr2.runtime import load

        self.loads.append((model.name, quantize, transient))
        return load(model=model, quantize=quantize, settings=self.seedvr2_settings, demo=self.settings.demo,
                    cache_dir=self.cache_dir)


class FakeJobContext(JobContext):
    """A JobContext for one job, run directly on the test thread."""

    def __init__(self, host: FakeHost, model: Any, request: Any, params: dict[str, Any],
                 inputs: Mapping[str, StoredFile], workdir: Path, cancel_on: str | None = None) -> None:
        self.host = host
        self.job_id = f"job_{next(_ids):016x}"
        self.job_type = "seedvr2"
        self.capability = host.capability
        self.model = model
        self.request = request
        self.params = params
        self.inputs = inputs
        self.settings = host.seedvr2_settings
        self.demo = host.settings.demo
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = logging.getLogger("kiapi.test.seedvr2")
        self.events: list[tuple[float | None, str | None]] = []  # every report, as given
        self.fraction = 0.0
        self.label = "queued"
        self.labels: list[str] = []
        self.artifacts: list[StoredFile] = []
        self.artifact_bytes: dict[str, bytes] = {}
        self.warnings: list[str] = []
        self.metrics: dict[str, Any] = {}
        self.transients: list[Any] = []
        self._cancel = threading.Event()
        self.cancel_on = cancel_on  # set the cancel flag when this label is reported

    def cancel(self) -> None:
        self._cancel.set()

    def progress(self, fraction: float | None = None, label: str | None = None) -> None:
        self.events.append((fraction, label))
        if label is not None and label == self.cancel_on:
            self._cancel.set()
        self.check_canceled()
        if fraction is not None:
            assert 0.0 <= fraction < 1.0, f"handler reported {fraction} before the job was done"
            self.fraction = max(self.fraction, fraction)
        if label is not None and label != self.label:
            self.label = label
            self.labels.append(label)

    @property
    def canceled(self) -> bool:
        return self._cancel.is_set()

    def check_canceled(self) -> None:
        if self._cancel.is_set():
            raise JobCanceled(f"job {self.job_id} was canceled")

    def runtime(self, quantize: int | None = ..., **options: Any) -> Any:  # type: ignore[assignment]
        self.check_canceled()
        bits = self.model.resident_quantize if quantize is ... else quantize
        if options or bits != self.model.resident_quantize:
            self.progress(None, "loading")
            runtime = self.host.load(self.model, bits, transient=True)
            self.transients.append(runtime)
            return runtime
        if self.model.name not in self.host.resident:
            self.progress(None, "loading")
            self.host.resident[self.model.name] = self.host.load(self.model, bits, transient=False)
        return self.host.resident[self.model.name]

    def store_artifact(self, source: Path | bytes, *, filename: str, content_type: str,
                       meta: Mapping[str, Any] | None = None) -> StoredFile:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        path = self.workdir / f"artifact-{len(self.artifacts)}-{filename}"
        path.write_bytes(data)
        stored = stored_file(path, content_type)
        self.artifacts.append(stored)
        self.artifact_bytes[stored.file_id] = data
        return stored

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def metric(self, name: str, value: Any) -> None:
        self.metrics[name] = value

    def finish(self) -> None:
        """What the host does when the handler returns: free transients, mark done."""
        for runtime in self.transients:
            runtime.close()
        self.transients.clear()
        self.fraction, self.label = 1.0, "done"
        self.labels.append("done")


class Seedvr2Harness:
    """Runs a request dict through decode -> model -> prepare -> check -> estimate -> handler."""

    def __init__(self, host: FakeHost, tmp_path: Path) -> None:
        self.host = host
        self.tmp_path = tmp_path

    def image(self, width: int, height: int, name: str | None = None, exif_orientation: int | None = None) -> StoredFile:
        from PIL import Image

        seed = int(hashlib.sha1(f"{width}x{height}".encode()).hexdigest()[:6], 16)
        image = Image.new("RGB", (width, height))
        image.putdata([((x * 37 + seed) % 256, (y * 53) % 256, ((x + y) * 11) % 256)
                       for y in range(height) for x in range(width)])
        path = self.tmp_path / (name or f"in_{width}x{height}.png")
        if exif_orientation is not None:
            exif = Image.Exif()
            exif[0x0112] = exif_orientation
            path = path.with_suffix(".jpg")
            image.save(path, format="JPEG", exif=exif)
            return stored_file(path, "image/jpeg")
        image.save(path, format="PNG")
        return stored_file(path)

    def prepare(self, body: dict[str, Any], image: StoredFile) -> tuple[Any, Any, dict[str, Any]]:
        from kiapi_seedvr2.schemas import UpscaleRequest

        request = msgspec.convert({"image": {"type": "file_id", "file_id": image.file_id}, **body}, UpscaleRequest)
        model = self.host.registry.resolve_model("seedvr2", request.model)
        operation = self.host.capability.operations[0]
        params = operation.prepare(request, model, self.host)
        operation.check(request, params, {"image": image}, self.host)
        return request, model, params

    def run(self, body: dict[str, Any], image: StoredFile | None = None, *, cancel_on: str | None = None,
            before: Any = None) -> tuple[Any, FakeJobContext]:
        from kiapi_seedvr2.handlers import upscale

        image = image or self.image(16, 16)
        request, model, params = self.prepare(body, image)
        job = FakeJobContext(self.host, model, request, params, {"image": image},
                             self.tmp_path / f"work-{next(_ids)}", cancel_on=cancel_on)
        if before is not None:
            before(job)
        try:
            result = upscale(job)
        finally:
            job.finish()
        return result, job


@pytest.fixture(scope="session")
def seedvr2_cache_dir(tmp_path_factory) -> Path:
    """Where the tiny weights are written (once per test session)."""
    return tmp_path_factory.mktemp("seedvr2-cache")


@pytest.fixture(scope="session")
def seedvr2_host(seedvr2_cache_dir) -> FakeHost:
    """A demo-mode fake host whose resident tiny runtimes are shared by the whole session."""
    return FakeHost(seedvr2_cache_dir)


@pytest.fixture
def seedvr2_harness(seedvr2_host, tmp_path) -> Seedvr2Harness:
    return Seedvr2Harness(seedvr2_host, tmp_path)
