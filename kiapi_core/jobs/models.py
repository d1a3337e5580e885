"""The Job record: the wire shape of ``GET /v1/jobs/{id}`` (the spec's Job schema plus extras)."""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class Job(msgspec.Struct, kw_only=True):
    """One unit of work. Fields up to ``progress_label`` are the contract; the rest are extras."""

    type: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str = ""
    status: JobStatus = JobStatus.queued
    result: Any = None
    artifacts: list[str] = msgspec.field(default_factory=list)
    error: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    progress: float | None = None
    progress_label: str = "queued"
    # --- kiapi extensions -------------------------------------------------------------
    #: Machine-readable error code when failed (``invalid_request``, ``memory_budget`` ...).
    error_code: str | None = None
    #: Position in the queue (0 = next) while queued, else ``None``.
    queue_position: int | None = None
    #: Things the client should know: ignored request fields, demo-mode noise ...
    warnings: list[str] = msgspec.field(default_factory=list)
    #: Capability family and resolved model variant.
    capability: str | None = None
    model: str | None = None
    #: Input files the server materialised or resolved, by request field path.
    inputs: dict[str, str] = msgspec.field(default_factory=dict)
    #: Measurements and plugin-reported numbers (peak memory, load time, training loss ...).
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)


class AsyncJobResponse(msgspec.Struct, kw_only=True):
    job_id: str
    type: str
    status: JobStatus
