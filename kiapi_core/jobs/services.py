"""What running jobs needs from the host, in one bundle.

The host builds one :class:`JobServices` and hands it to the job manager, which hands it to its
workers (the model thread and the light pool), which hand it to each job's context. Before,
six separate arguments were threaded through all four constructors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..registry import Capability, Model, Operation
from .running import FileSink, ModelSource


class ModelManagerLike(ModelSource, Protocol):
    """The ``kiapi_core.memory`` ModelManager calls made on the worker thread."""

    def begin_job(self, job_id: str, capability: Capability, model: Model, operation: Operation,
                  params: Mapping[str, Any] | None = None) -> Any:
        """Admit the job (may evict idle models or raise MemoryBudgetExceeded) and start
        measuring it."""

    def end_job(self, job_id: str, *, succeeded: bool = True) -> Mapping[str, Any] | None:
        """Free transients and the reservation; returns measurements (``peak_gb`` ...). Runs
        whatever the outcome, also when begin_job never ran or raised."""


@dataclass(frozen=True)
class JobServices:
    """The host's services a job runs with."""

    #: Where artifacts go (the Files store).
    files: FileSink
    #: Loads, keeps and measures models (the memory manager; the light pool has its own).
    models: ModelManagerLike
    #: A capability's settings Struct by capability name.
    plugin_settings: Callable[[str], Any]
    #: A capability's persistent cache directory by capability name (created on call).
    cache_dir: Callable[[str], Path]
    #: Jobs' scratch directories are made under here, on first use.
    work_root: Path
    #: Whether the host serves tiny random-weight demo models.
    demo: bool


__all__ = ["JobServices", "ModelManagerLike"]
