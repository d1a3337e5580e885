"""Fixtures for the ernie plugin tests: tiny models and a stand-in JobContext.

The job manager is not part of these tests: :class:`ErnieFakeJob` implements the core's
``JobContext`` ABC directly (``runtime()`` calls the plugin's loader, artifacts go to a temp
dir), so the handlers run exactly as on the model thread. Every fixture is prefixed ``ernie_``.
"""

from __future__ import annotations

import os

for _key, _value in (("MLX_DISABLE_COMPILE", "1"), ("HF_HUB_OFFLINE", "1"), ("TQDM_DISABLE", "1"),
                     ("TRANSFORMERS_VERBOSITY", "error")):
    os.environ.setdefault(_key, _value)

import io  # noqa: E402
import itertools  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import msgspec  # noqa: E402
import pytest  # noqa: E402

from kiapi_core.errors import JobCanceled  # noqa: E402
from kiapi_core.files.models import FileRecord, StoredFile  # noqa: E402
from kiapi_core.jobs.context import JobContext  # noqa: E402
from kiapi_ernie.capability import CAPABILITY  # noqa: E402
from kiapi_ernie.settings import ErnieSettings  # noqa: E402

_ids = itertools.count(1)


class ErnieHost:
    """The bits of the host ``prepare``/``check`` use."""

    def __init__(self, demo: bool = True, max_image_pixels: int = 100_000_000, **settings: Any) -> None:
        self.settings = _CoreSettings(demo=demo, max_image_pixels=max_image_pixels)
        self._plugin = ErnieSettings(**settings)

    def plugin_settings(self, name: str, schema: type | None = None) -> ErnieSettings:
        assert name == "ernie"
        return self._plugin


class _CoreSettings(msgspec.Struct, frozen=True):
    demo: bool = True
    max_image_pixels: int = 100_000_000


def ernie_store(path_or_bytes: Path | bytes, root: Path, filename: str = "blob",
                content_type: str = "application/octet-stream", meta: dict | None = None) -> StoredFile:
    """Store bytes like the Files API would (an extension-less blob under ``root``)."""
    file_id = f"file_{next(_ids):016x}"
    target = root / file_id
    root.mkdir(parents=True, exist_ok=True)
    if isinstance(path_or_bytes, bytes):
        target.write_bytes(path_or_bytes)
    else:
        shutil.copyfile(path_or_bytes, target)
    record = FileRecord(file_id=file_id, filename=filename, content_type=content_type,
                        size=target.stat().st_size, created_at=time.time(), meta=dict(meta or {}))
    return StoredFile(record=record, path=target)


class ErnieFakeJob(JobContext):
    """A JobContext that runs the plugin's loader directly and records what the handler does."""

    def __init__(self, *, operation: str, request: Any, host: ErnieHost, inputs: dict[str, StoredFile],
                 tmp: Path, cache_dir: Path, runtimes: dict, cancel_after: int | None = None) -> None:
        op = next(o for o in CAPABILITY.operations if o.name == operation)
        self.operation = operation
        self.job_id = f"job_{next(_ids):016x}"
        self.job_type = op.job_type
        self.capability = CAPABILITY
        self.model = _registry_model(getattr(request, "model", None))
        self.request = request
        self.params = op.prepare(request, self.model, host)
        if op.check is not None:
            op.check(request, self.params, inputs, host)
        self.inputs = inputs
        self.settings = host._plugin
        self.demo = host.settings.demo
        self.workdir = tmp / "work" / self.job_id
        self.workdir.mkdir(parents=True)
        self.files_root = tmp / "files"
        self.cache_dir = cache_dir
        self.log = __import__("logging").getLogger("test.ernie")
        self.events: list[tuple[float | None, str | None]] = []
        self.labels: list[str] = []
        self.artifacts: list[StoredFile] = []
        self.warnings: list[str] = []
        self.metrics: dict[str, Any] = {}
        self.runtime_calls: list[dict[str, Any]] = []
        self._runtimes = runtimes
        self._transient: list[Any] = []
        self._cancel_after = cancel_after
        self._canceled = False

    # --- JobContext -------------------------------------------------------------------
    def progress(self, fraction: float | None = None, label: str | None = None) -> None:
        self.events.append((fraction, label))
        if label is not None and (not self.labels or self.labels[-1] != label):
            self.labels.append(label)
        if self._cancel_after is not None and len(self.events) > self._cancel_after:
            self._canceled = True
        self.check_canceled()

    @property
    def canceled(self) -> bool:
        return self._canceled

    def check_canceled(self) -> None:
        if self._canceled:
            raise JobCanceled(self.job_id)

    def runtime(self, quantize: int | None = ..., **options: Any) -> Any:
        from kiapi_ernie.runtime import load

        if quantize is ...:
            quantize = self.model.resident_quantize
        self.runtime_calls.append({"quantize": quantize, **options})
        resident = quantize == self.model.resident_quantize and not options
        key = (self.model.name, quantize)
        if resident and key in self._runtimes:
            return self._runtimes[key]
        self.progress(None, "loading")
        runtime = load(model=self.model, quantize=quantize, settings=self.settings, demo=self.demo,
                       cache_dir=self.cache_dir, **options)
        if resident:
            self._runtimes[key] = runtime
        else:
            self._transient.append(runtime)
        return runtime

    def store_artifact(self, source: Path | bytes, *, filename: str, content_type: str,
                       meta: Any = None) -> StoredFile:
        stored = ernie_store(source, self.files_root, filename, content_type, meta)
        self.artifacts.append(stored)
        return stored

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def metric(self, name: str, value: Any) -> None:
        self.metrics[name] = value

    # --- helpers ------------------------------------------------------------------------
    def run(self):
        from kiapi_ernie import handlers

        try:
            return getattr(handlers, self.operation)(self)
        finally:
            for runtime in self._transient:
                runtime.close()
            self._transient.clear()


def _registry_model(name: str | None):
    from kiapi_core.registry import Registry

    registry = Registry()
    registry.add(CAPABILITY, plugin="ernie", distribution="kiapi-ernie")
    return registry.resolve_model("ernie", name)


@pytest.fixture(scope="session")
def ernie_cache_dir(tmp_path_factory) -> Path:
    from kiapi_ernie.tiny import ensure_tiny_dir

    cache = tmp_path_factory.mktemp("ernie-cache")
    ensure_tiny_dir(cache)
    return cache


@pytest.fixture(scope="session")
def ernie_runtimes():
    """Resident runtimes shared across tests, like the host's resident cache."""
    runtimes: dict = {}
    yield runtimes
    for runtime in runtimes.values():
        runtime.close()


@pytest.fixture
def ernie_host() -> ErnieHost:
    return ErnieHost(demo=True)


@pytest.fixture
def ernie_job(tmp_path, ernie_cache_dir, ernie_runtimes, ernie_host):
    """``ernie_job(operation, request, inputs=None, host=None, cancel_after=None) -> ErnieFakeJob``."""

    def make(operation: str, request: Any, inputs: dict[str, StoredFile] | None = None,
             host: ErnieHost | None = None, cancel_after: int | None = None) -> ErnieFakeJob:
        return ErnieFakeJob(operation=operation, request=request, host=host or ernie_host, inputs=inputs or {},
                            tmp=tmp_path, cache_dir=ernie_cache_dir, runtimes=ernie_runtimes,
                            cancel_after=cancel_after)

    return make


@pytest.fixture
def ernie_files(tmp_path):
    """``ernie_files(bytes_or_path, filename=...) -> StoredFile`` in a per-test Files dir."""

    def store(source: Path | bytes, filename: str = "blob", content_type: str = "application/octet-stream"):
        return ernie_store(source, tmp_path / "inputs", filename, content_type)

    return store


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
def ernie_helpers():
    """The module-level helpers, for tests that cannot import conftest directly."""
    import types

    return types.SimpleNamespace(png=ernie_png, zip=ernie_zip, store=ernie_store, Host=ErnieHost)
