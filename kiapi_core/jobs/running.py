"""The JobContext handlers receive: progress, cancellation, model runtimes and artifacts.

A :class:`RunningJob` lives on the model worker thread for the duration of one job. It never
touches the job record directly: every change goes through :meth:`JobBoard.mutate`, which takes
the manager's lock, saves the record in the store and wakes waiters on the event loop. That keeps
one writer discipline (the manager) and lets a persistent store see every change.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..errors import JobCanceled
from ..files.embed import embed_metadata
from ..files.models import StoredFile
from ..registry import Capability, Model
from .context import JobContext
from .models import Job

if TYPE_CHECKING:
    from .services import JobServices

#: Progress is never shown as complete before the job is: handlers' fractions are capped here.
PROGRESS_CAP = 0.99
#: Throttle: publish a fraction only after this many seconds or this much change (labels always).
MIN_INTERVAL_S = 0.1
MIN_DELTA = 0.01


class JobBoard(Protocol):
    """What the context needs from the manager."""

    def mutate(self, job: Job, change: Callable[[Job], None]) -> None:
        """Apply ``change`` to the live record under the manager's lock, save it, wake waiters."""


class FileSink(Protocol):
    """The part of the Files store artifacts go to (``kiapi_core.files.store.FileStore``)."""

    def put_bytes(self, data: bytes, *, filename: str, content_type: str,
                  meta: Mapping[str, Any] | None = None) -> StoredFile: ...

    def put_path(self, path: Path, *, filename: str, content_type: str,
                 meta: Mapping[str, Any] | None = None, move: bool = True) -> StoredFile: ...


class ModelSource(Protocol):
    """The part of the model manager the context needs (``kiapi_core.memory``)."""

    def acquire(self, job_id: str, capability: Capability, model: Model, quantize: int | None,
                options: Mapping[str, Any], on_loading: Callable[[], None]) -> Any: ...


class _JobLog(logging.LoggerAdapter):
    """Prefixes every line with the job id so a job's log lines can be found."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self.extra['job_id'] if self.extra else '?'}] {msg}", kwargs


class RunningJob(JobContext):
    """The :class:`JobContext` implementation used by the worker thread."""

    def __init__(self, *, job: Job, board: JobBoard, cancel: threading.Event, capability: Capability,
                 model: Model, request: Any, params: Any, inputs: Mapping[str, StoredFile],
                 services: JobServices) -> None:
        self._job = job
        self._board = board
        self._cancel = cancel
        self._services = services
        self._files = services.files
        self._models = services.models
        self.job_id = job.id
        self.job_type = job.type
        self.capability = capability
        self.model = model
        self.request = request
        self.params = params
        self.inputs = inputs
        self.settings = services.plugin_settings(capability.name)
        self.demo = services.demo
        # workdir, cache_dir and log are made on first use: most jobs need none of them, and a
        # directory made (and removed) per job cost a no-op job a third of its model-thread time.
        self._workdir: Path | None = None  # set once made
        # Last published state; mflux callbacks or helper threads may report concurrently.
        self._plock = threading.Lock()
        self._fraction = job.progress or 0.0
        self._label = job.progress_label
        self._published_at = 0.0

    @property
    def workdir(self) -> Path:  # type: ignore[override]
        if self._workdir is None:
            path = self._services.work_root / self.job_id
            path.mkdir(parents=True, exist_ok=True)
            self._workdir = path
        return self._workdir

    @functools.cached_property
    def cache_dir(self) -> Path:  # type: ignore[override]
        return self._services.cache_dir(self.capability.name)

    @functools.cached_property
    def log(self) -> logging.Logger:  # type: ignore[override]
        return _JobLog(logging.getLogger(f"kiapi.jobs.{self.capability.name}"),  # type: ignore[return-value]
                       {"job_id": self.job_id})

    # --- progress and cancellation --------------------------------------------------------
    def progress(self, fraction: float | None = None, label: str | None = None) -> None:
        self.check_canceled()
        self._publish(fraction, label)

    @property
    def canceled(self) -> bool:
        return self._cancel.is_set()

    def check_canceled(self) -> None:
        if self._cancel.is_set():
            raise JobCanceled(f"job {self.job_id} was canceled")

    def _publish(self, fraction: float | None, label: str | None) -> None:
        """Record progress: monotonic, capped below 1.0, throttled except for label changes."""
        with self._plock:
            current = self._fraction
            new = current
            if fraction is not None and math.isfinite(fraction):
                new = max(current, min(max(float(fraction), 0.0), PROGRESS_CAP))
            label_changed = label is not None and label != self._label
            now = time.monotonic()
            if not label_changed:
                if new == current:
                    return
                if now - self._published_at < MIN_INTERVAL_S and new - current < MIN_DELTA:
                    return
            self._fraction = new
            if label is not None:
                self._label = label
            self._published_at = now
            value, text = round(new, 4), self._label  # no float noise like 0.42999999999999994

        def change(job: Job) -> None:
            job.progress = value
            job.progress_label = text

        self._board.mutate(self._job, change)

    # --- models ---------------------------------------------------------------------------
    def runtime(self, quantize: int | None = ..., **options: Any) -> Any:  # type: ignore[assignment]
        self.check_canceled()
        bits = self.model.resident_quantize if quantize is ... else quantize
        runtime = self._models.acquire(self.job_id, self.capability, self.model, bits, options,
                                       on_loading=lambda: self._publish(None, "loading"))
        # A handler that sets no label of its own should not look like it is still loading.
        if self._label == "loading":
            self._publish(None, "running")
        self.check_canceled()
        return runtime

    # --- outputs --------------------------------------------------------------------------
    def store_artifact(self, source: Path | bytes, *, filename: str, content_type: str,
                       meta: Mapping[str, Any] | None = None) -> StoredFile:
        record_meta: dict[str, Any] = {"job_id": self.job_id, "job_type": self.job_type,
                                       "capability": self.capability.name, "model": self.model.name,
                                       "params": self.params}
        record_meta.update(meta or {})
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = embed_metadata(bytes(source), content_type, self._made_with())
            stored = self._files.put_bytes(data, filename=filename, content_type=content_type,
                                           meta=record_meta)
        else:
            path = Path(source)
            move = self._workdir is not None and path.resolve().is_relative_to(self._workdir.resolve())
            stored = self._files.put_path(path, filename=filename, content_type=content_type,
                                          meta=record_meta, move=move)
        self._board.mutate(self._job, lambda job: job.artifacts.append(stored.file_id))
        return stored

    def _made_with(self) -> dict[str, Any]:
        """What an image output carries about its making (see :mod:`kiapi_core.files.embed`)."""
        operation = next((op.name for op in self.capability.operations if op.job_type == self.job_type),
                         self.job_type)
        # No job id: the same request and seed give the same bytes (the record has the id).
        return {"capability": self.capability.name, "model": self.model.name, "operation": operation,
                "params": self.params}

    def warn(self, message: str) -> None:
        def change(job: Job) -> None:
            if message not in job.warnings:
                job.warnings.append(message)

        self._board.mutate(self._job, change)

    def metric(self, name: str, value: Any) -> None:
        try:
            value = msgspec.to_builtins(value)
        except (TypeError, msgspec.EncodeError):
            value = repr(value)  # the job record must stay encodable whatever a plugin passes
        self._board.mutate(self._job, lambda job: job.metrics.__setitem__(name, value))

    # --- lifecycle (worker only) -----------------------------------------------------------
    def close(self) -> None:
        """Remove the scratch directory, if the job made one; runs whatever the outcome."""
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


__all__ = ["PROGRESS_CAP", "FileSink", "JobBoard", "ModelSource", "RunningJob"]
