"""The model worker thread: runs one job at a time, and survives whatever a handler does.

There is exactly one such thread because MLX is not thread-safe (mflux models carry
unsynchronised mutable state) and because the memory budget is only sound when one job
generates at a time. The thread never dies from a job: every exception becomes the job's
outcome, ``models.end_job`` runs whatever happened, and the loop goes on to the next job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from ..errors import InvalidResult, JobCanceled, KiapiError
from ..files.models import StoredFile
from ..imports import resolve_callable
from ..plugin_api import typed_params
from ..registry import Capability, Model, Operation
from .models import Job, JobStatus
from .running import JobBoard, RunningJob
from .services import JobServices, ModelManagerLike

log = logging.getLogger("kiapi.jobs")


@dataclass(eq=False)
class Pending:
    """A job plus what running it needs but is never served (request Struct, resolved files)."""

    job: Job
    capability: Capability
    operation: Operation
    model: Model
    request: Any
    inputs: Mapping[str, StoredFile]
    cancel: threading.Event = field(default_factory=threading.Event)
    #: Why the job was canceled when it was not the client's doing (shutdown): the answer
    #: its sync caller gets instead of a plain 409.
    cancel_reason: KiapiError | None = None
    #: Times later jobs for a loaded model started first, and since when (see :mod:`.scheduler`).
    bypassed: int = 0
    bypassed_since: float | None = None

    @property
    def model_key(self) -> tuple[str, str]:
        return (self.capability.name, self.model.name)


@dataclass
class Outcome:
    """How a run ended; the manager turns it into the job's terminal state."""

    status: JobStatus
    result: Any = None
    error: str | None = None
    error_code: str | None = None
    #: The error to answer a sync caller with (keeps the HTTP status and extras).
    exc: KiapiError | None = None

    @classmethod
    def of(cls, status: JobStatus, error: KiapiError) -> Outcome:
        return cls(status, error=error.detail, error_code=error.code, exc=error)


class AdminTask:
    """Work that must run on the model thread but is no job (warmup, admin load/unload): it
    is serialised with jobs, and its outcome is handed to an awaiting coroutine."""

    def __init__(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()

    def run(self) -> None:
        try:
            value, error = self.fn(), None
        except BaseException as exc:  # handed to the caller, never kills the thread
            value, error = None, exc
        self.settle(value, error)

    def settle(self, value: Any, error: BaseException | None) -> None:
        """Resolve the future from any thread (ignored if the caller gave up or the loop closed)."""

        def apply() -> None:
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(value)

        try:
            self.loop.call_soon_threadsafe(apply)
        except RuntimeError:
            pass


class WorkerBoard(JobBoard, Protocol):
    """What the worker needs from the manager."""

    def next_job(self) -> Pending | AdminTask | None:
        """Block until a job (marked running) or an admin task is ready; ``None`` to exit."""

    def finish(self, pending: Pending, outcome: Outcome, metrics: Mapping[str, Any]) -> None:
        """Record the terminal state and wake waiters."""

    def worker_exited(self) -> None:
        """The thread is about to end."""


def resolve_handler(operation: Operation) -> Callable[..., Any]:
    """The operation's handler; ``"module:function"`` is imported on first use, then cached."""
    try:
        return resolve_callable(operation.handler, "handler")
    except ValueError as exc:
        raise KiapiError(str(exc)) from exc


class Worker(threading.Thread):
    #: The JobContext built for each job (``kiapi_core.testing`` substitutes a recording subclass).
    context_class: type[RunningJob] = RunningJob

    def __init__(self, *, board: WorkerBoard, services: JobServices) -> None:
        # Daemon: a handler that ignores cancellation must not keep the process alive after
        # the graceful-stop deadline.
        super().__init__(name="kiapi-model-worker", daemon=True)
        self._board = board
        self._services = services
        self._files = services.files
        self._models = services.models

    def run(self) -> None:
        # Artifacts are published at once and synced to disk right after each job's answer
        # (files/store.py, docs/reliability.md). Fakes in tests may not offer this.
        defer = getattr(self._files, "defer_syncs", None)
        if defer is not None:
            defer()
        try:
            while True:
                pending = self._board.next_job()
                if pending is None:
                    return
                if isinstance(pending, AdminTask):
                    pending.run()
                    continue
                try:
                    self.execute(pending)
                except BaseException:  # the thread must outlive any job
                    log.exception("job %s: unexpected error in the worker", pending.job.id)
        finally:
            self._board.worker_exited()

    def execute(self, pending: Pending) -> None:
        job_id = pending.job.id
        ctx: RunningJob | None = None
        try:
            ctx = self.context_class(
                job=pending.job, board=self._board, cancel=pending.cancel, capability=pending.capability,
                model=pending.model, request=pending.request, inputs=pending.inputs,
                params=typed_params(pending.operation, pending.job.params), services=self._services)
            outcome = self._run_handler(pending, ctx)
        except BaseException as exc:  # context set-up failed (disk full ...)
            outcome = _failure(job_id, exc)
        metrics: Mapping[str, Any] = {}
        try:
            # Whatever happened: free the reservation and any transient model.
            metrics = self._models.end_job(job_id, succeeded=outcome.status is JobStatus.succeeded) or {}
        except Exception:
            log.exception("job %s: models.end_job failed", job_id)
        self._board.finish(pending, outcome, metrics)  # answer first, then sync and tidy up
        sync = getattr(self._files, "sync_deferred", None)
        if sync is not None:
            try:
                sync()
            except OSError:  # the bytes stay published; only their durability is in doubt
                log.exception("job %s: syncing its artifacts to disk failed", job_id)
        if ctx is not None:
            ctx.close()

    def _run_handler(self, pending: Pending, ctx: RunningJob) -> Outcome:
        job_id = pending.job.id
        try:
            ctx.check_canceled()
            handler = resolve_handler(pending.operation)
            self._models.begin_job(job_id, pending.capability, pending.model, pending.operation,
                                   params=pending.job.params)
            ctx.check_canceled()
            builtins = checked_result(pending.operation, handler(ctx))
        except JobCanceled:
            log.info("job %s: canceled while running", job_id)
            return Outcome(JobStatus.canceled)
        except BaseException as exc:
            if pending.cancel.is_set():
                # Library code may wrap or swallow JobCanceled (``except Exception``): a job
                # that was asked to stop and stopped with an error was canceled all the same.
                log.info("job %s: canceled while running (ended with %s)", job_id, type(exc).__name__)
                return Outcome(JobStatus.canceled)
            return _failure(job_id, exc)
        return Outcome(JobStatus.succeeded, result=builtins)


def checked_result(operation: Operation, result: Any) -> Any:
    """The handler's result as JSON-ready builtins, checked against the operation's declared
    result Struct: a result that does not match is the plugin's bug and fails the job (500
    ``invalid_result``) instead of being served as if it matched."""
    declared = operation.result
    if not (isinstance(declared, type) and issubclass(declared, msgspec.Struct)):
        return msgspec.to_builtins(result) if result is not None else None
    if result is None:
        raise InvalidResult(f"the handler of {operation.name!r} returned nothing, but the operation declares "
                            f"a {declared.__name__} result; this is a bug in the plugin")
    try:
        msgspec.json.decode(msgspec.json.encode(result), type=declared, strict=False)
    except (msgspec.ValidationError, TypeError) as exc:
        raise InvalidResult(f"the handler of {operation.name!r} returned a result that does not match its "
                            f"declared {declared.__name__}: {exc}; this is a bug in the plugin") from exc
    return msgspec.to_builtins(result)


def _failure(job_id: str, exc: BaseException) -> Outcome:
    if isinstance(exc, KiapiError):
        # Expected failures (bad input, memory budget): the message is the story, no traceback.
        log.info("job %s failed: %s (%s)", job_id, exc.detail, exc.code)
        return Outcome(JobStatus.failed, error=exc.detail, error_code=exc.code, exc=exc)
    log.error("job %s failed with an unexpected error:\n%s", job_id,
              "".join(traceback.format_exception(exc)))
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    wrapped = KiapiError(f"the job failed: {message}")
    return Outcome(JobStatus.failed, error=message, error_code=wrapped.code, exc=wrapped)


__all__ = ["AdminTask", "JobServices", "ModelManagerLike", "Outcome", "Pending", "Worker", "WorkerBoard",
           "resolve_handler"]
