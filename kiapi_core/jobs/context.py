"""JobContext: everything a handler gets while its job runs on the model thread.

A handler is ``handler(job: JobContext) -> result`` where ``result`` is an instance of the
operation's result Struct (or a dict). It runs on the single model worker thread, so it may
call MLX freely, and must call :meth:`JobContext.check_canceled` (or report progress, which
checks too) often enough that a cancel takes effect within one step.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..files.models import StoredFile
from ..registry import Capability, Model


class JobContext(abc.ABC):
    """The handler's view of its job. The job manager provides the implementation."""

    #: ``job_0123...``
    job_id: str
    job_type: str
    capability: Capability
    #: The model declaration the request resolved to.
    model: Model
    #: The decoded request Struct.
    request: Any
    #: Parameters resolved by the operation's ``prepare`` (recorded as the job's ``params``):
    #: an instance of the operation's ``params`` Struct when it declares one, else a dict.
    params: Any
    #: Resolved FileRef inputs by request field path (``"image"``, ``"loras[0].file"``).
    inputs: Mapping[str, StoredFile]
    #: The plugin's settings Struct instance (or ``None`` when it declares none).
    settings: Any
    #: True when the host serves tiny random-weight demo models.
    demo: bool
    #: A private scratch directory, removed when the job ends whatever the outcome.
    workdir: Path
    #: The capability's persistent cache directory (demo weights, converted models).
    cache_dir: Path
    log: logging.Logger

    @abc.abstractmethod
    def progress(self, fraction: float | None = None, label: str | None = None) -> None:
        """Report progress in [0, 1] and/or a phase label; also checks for cancellation.

        Fractions are clamped to be monotonic and below 1.0 until the job is done; updates are
        throttled, but a new label is always published.
        """

    @property
    @abc.abstractmethod
    def canceled(self) -> bool:
        """True once a cancel was requested."""

    @abc.abstractmethod
    def check_canceled(self) -> None:
        """Raise :class:`~kiapi_core.errors.JobCanceled` if a cancel was requested."""

    @abc.abstractmethod
    def runtime(self, quantize: int | None = ..., **options: Any) -> Any:
        """The loaded model to run: the resident instance for ``quantize`` (default: the
        model's resident quantization), loading it first if needed (label ``loading``).

        Passing ``options`` (e.g. LoRA paths) or a non-resident ``quantize`` builds a one-off
        transient instance instead; it is freed when the job ends.
        """

    @abc.abstractmethod
    def store_artifact(self, source: Path | bytes, *, filename: str, content_type: str,
                       meta: Mapping[str, Any] | None = None) -> StoredFile:
        """Store a produced file in the Files API and list it in the job's ``artifacts``.

        A ``Path`` inside :attr:`workdir` is moved, not copied.
        """

    @abc.abstractmethod
    def warn(self, message: str) -> None:
        """Add a warning to the job (shown to the client)."""

    @abc.abstractmethod
    def metric(self, name: str, value: Any) -> None:
        """Record a measurement on the job's ``metrics`` (loss, epoch, peak memory ...)."""

    @contextlib.contextmanager
    def phase(self, label: str, start: float | None = None, end: float | None = None) -> Iterator[None]:
        """Report ``label`` (at ``start``) for a block of work, then ``end`` when it finishes."""
        self.progress(start, label)
        yield
        if end is not None:
            self.progress(end)
