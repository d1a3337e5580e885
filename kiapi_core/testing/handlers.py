"""Unit-test an operation's handler without HTTP or the worker thread (docs/plugins/testing.md).

:class:`HandlerHarness` validates a request as ``POST`` would, then runs the handler *on the
calling thread* through the core's worker code with a real ``RunningJob``: artifacts go to the
host's Files store, ``job.runtime()`` loads through the plugin's loader and models stay resident
in ``host.models`` between runs. Progress reports are recorded unthrottled; a run can be canceled
when a label or fraction is reported. Synchronous: from ``async`` tests use ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..admission import validate
from ..errors import JobCanceled
from ..files.models import StoredFile
from ..http.operations import decode_body
from ..jobs.manager import new_job_id
from ..jobs.models import Job, JobStatus
from ..jobs.running import RunningJob
from ..jobs.services import JobServices
from ..jobs.worker import Outcome, Pending, Worker, resolve_handler
from ..registry import Capability, Model, Operation

if TYPE_CHECKING:
    from ..host import Host

#: A progress report as the handler made it: ``(fraction, label)``, before clamping/throttling.
Event = tuple[float | None, str | None]
#: Cancel trigger: a label prefix, or a predicate over each reported event.
CancelOn = str | Callable[[float | None, str | None], bool]


def file_ref(stored: StoredFile) -> dict[str, str]:
    """The request-body FileRef for a stored file: ``{"type": "file_id", "file_id": ...}``."""
    return {"type": "file_id", "file_id": stored.file_id}


@dataclass
class Prepared:
    """A request that passed the request path's checks; edit ``params`` before running to vary it."""

    capability: Capability
    operation: Operation
    model: Model
    request: Any
    params: dict[str, Any]
    #: Resolved FileRefs by field path (``"image"``, ``"loras[0].file"``), as the handler sees them.
    inputs: dict[str, StoredFile]
    warnings: list[str]  # request-level ones (ignored fields); the demo-mode note is left out
    estimate_gb: float


@dataclass
class HandlerRun:
    """How one handler run ended, and everything it reported."""

    prepared: Prepared
    job: Job  # the final job record (status, throttled progress, artifacts, error)
    params: dict[str, Any]
    inputs: dict[str, StoredFile]
    model: Model
    warnings: list[str]  # what the handler added with job.warn()
    metrics: dict[str, Any]  # job.metric() values plus the core's memory measurements
    status: JobStatus = JobStatus.running
    result: Any = None  # the result as the job record holds it (builtins)
    returned: Any = None  # the handler's return value as it returned it (a result Struct ...)
    #: What the handler raised (the original exception, also when the run counts as canceled).
    error: BaseException | None = None
    artifacts: list[StoredFile] = field(default_factory=list)
    #: Every report, unthrottled: the handler's ``progress()`` calls and the core's ``loading``.
    events: list[Event] = field(default_factory=list)
    #: ``job.runtime()`` calls as ``{"quantize": bits, **options}``; ``loads``: those that loaded.
    runtime_calls: list[dict[str, Any]] = field(default_factory=list)
    loads: list[dict[str, Any]] = field(default_factory=list)
    runtimes: list[Any] = field(default_factory=list)  # what job.runtime() returned, in order

    succeeded = property(lambda self: self.status is JobStatus.succeeded, doc="The handler returned.")
    canceled = property(lambda self: self.status is JobStatus.canceled, doc="Stopped by a cancel.")
    failed = property(lambda self: self.status is JobStatus.failed, doc="The handler raised.")

    @property
    def labels(self) -> list[str]:
        """The labels reported, consecutive repeats dropped."""
        out: list[str] = []
        for _, label in self.events:
            if label is not None and (not out or out[-1] != label):
                out.append(label)
        return out

    def read(self, which: int | str = -1) -> bytes:
        """An artifact's bytes, by index in :attr:`artifacts` or by file id."""
        stored = next(a for a in self.artifacts if a.file_id == which) if isinstance(which, str) \
            else self.artifacts[which]
        return Path(stored.path).read_bytes()

    def raise_for_status(self) -> HandlerRun:
        """Re-raise what ended a failed or canceled run; returns the run when it succeeded."""
        if self.succeeded:
            return self
        raise self.error or JobCanceled(f"job {self.job.id} was canceled")


class HandlerHarness:
    """Runs one capability's handlers on a (test) host; see the module docstring."""

    def __init__(self, host: Host, capability: str | None = None) -> None:
        self.host = host
        names = [c.name for c in host.registry]
        if capability is None and len(names) != 1:
            raise ValueError(f"the host serves {names}: name the capability to test")
        self.capability = host.registry.get(capability or names[0])

    def store(self, data: bytes | Path, filename: str = "input.bin",
              content_type: str = "application/octet-stream") -> StoredFile:
        """Put an input file in the host's Files store (reference it with :func:`file_ref`)."""
        content = data.read_bytes() if isinstance(data, Path) else data
        return self.host.files.put_bytes(content, filename=filename, content_type=content_type)

    def prepare(self, operation: str, body: Mapping[str, Any] | msgspec.Struct) -> Prepared:
        """Decode ``body`` (a JSON-like dict, or an already built request Struct) and validate it
        like ``POST`` does; raises what the request would be rejected with (422, 400, 503)."""
        op = next((o for o in self.capability.operations if o.name == operation), None)
        if op is None:
            raise ValueError(f"{self.capability.name} has no operation {operation!r}")
        request, warnings = (body, []) if isinstance(body, msgspec.Struct) else decode_body(dict(body), op.request)
        model = self.host.registry.resolve_model(self.capability.name, getattr(request, "model", None))
        checked = asyncio.run(validate(self.host, self.capability, op, request, model))
        return Prepared(capability=self.capability, operation=op, model=model, request=request,
                        params=checked.params, inputs=dict(checked.inputs.files), warnings=warnings,
                        estimate_gb=checked.estimate_gb)

    def run(self, operation: str | Prepared, body: Mapping[str, Any] | msgspec.Struct | None = None, *,
            cancel_on: CancelOn | None = None, cancel_at: float | None = None) -> HandlerRun:
        """Prepare (unless given a :class:`Prepared`) and run the handler to its end.

        ``cancel_on`` (a label prefix or ``predicate(fraction, label)``) and ``cancel_at`` (a
        fraction) request a cancel right after a matching report went through, as a client
        watching the job would: the handler's next ``progress()``, ``check_canceled()`` or
        ``runtime()`` raises ``JobCanceled``. Never raises for the handler's own outcome: see
        :attr:`HandlerRun.status`, :attr:`HandlerRun.error` and :meth:`HandlerRun.raise_for_status`.
        """
        prepared = operation if isinstance(operation, Prepared) else self.prepare(operation, body or {})
        job = Job(type=prepared.operation.job_type, params=prepared.params, id=new_job_id(),
                  created_at=time.time(), started_at=time.time(), status=JobStatus.running,
                  capability=self.capability.name, model=prepared.model.name,
                  inputs={path: stored.file_id for path, stored in prepared.inputs.items()})
        run = HandlerRun(prepared=prepared, job=job, params=prepared.params, inputs=prepared.inputs,
                         model=prepared.model, warnings=job.warnings, metrics=job.metrics)
        board = _Board(run, cancel_on, cancel_at)
        handler = resolve_handler(prepared.operation)

        def recorded(ctx: RunningJob) -> Any:
            try:
                run.returned = handler(ctx)
            except BaseException as exc:
                run.error = exc
                raise
            return run.returned

        pending = Pending(job=job, capability=self.capability, model=prepared.model, request=prepared.request,
                          operation=msgspec.structs.replace(prepared.operation, handler=recorded),
                          inputs=prepared.inputs, cancel=board.cancel)
        worker = _Worker(board=board, services=JobServices(
            files=self.host.files, models=self.host.models, plugin_settings=self.host.plugin_settings,
            cache_dir=self.host.cache_dir, work_root=self.host.settings.data_path / "work",
            demo=self.host.settings.demo))
        worker.execute(pending)
        run.status, run.result = job.status, job.result
        run.artifacts = [self.host.files.get(file_id) for file_id in job.artifacts]
        return run


class _Board:
    """The job manager's part for one run: applies changes, records reports, triggers cancels."""

    def __init__(self, run: HandlerRun, cancel_on: CancelOn | None, cancel_at: float | None) -> None:
        self.run = run
        self.cancel = threading.Event()
        if isinstance(cancel_on, str):
            prefix = cancel_on
            cancel_on = lambda _f, label: label is not None and label.startswith(prefix)
        self._cancel_on = cancel_on
        self._cancel_at = cancel_at

    def reported(self, fraction: float | None, label: str | None) -> None:
        """A report went through: a matching one requests the cancel, as a client seeing it would."""
        if ((self._cancel_on is not None and self._cancel_on(fraction, label))
                or (self._cancel_at is not None and fraction is not None and fraction >= self._cancel_at)):
            self.cancel.set()

    def mutate(self, job: Job, change: Callable[[Job], None]) -> None:
        change(job)  # one run, nobody else reads the record meanwhile: no lock needed

    def finish(self, pending: Pending, outcome: Outcome, metrics: Mapping[str, Any]) -> None:
        job = pending.job
        job.metrics.update(metrics)
        job.status, job.finished_at = outcome.status, time.time()
        if outcome.status is JobStatus.succeeded:
            job.result, job.progress, job.progress_label = outcome.result, 1.0, "done"
        else:
            job.error, job.error_code = outcome.error, outcome.error_code

    def next_job(self) -> None:  # the harness never starts its worker as a thread
        return None

    worker_exited = next_job


class _RecordingJob(RunningJob):
    """The core's RunningJob, reporting every progress call and runtime request to the board."""

    _board: _Board
    _loading: dict[str, Any] | None = None  # the runtime() call in progress

    def progress(self, fraction: float | None = None, label: str | None = None) -> None:
        self._board.run.events.append((fraction, label))  # list.append is atomic: threads may report
        super().progress(fraction, label)
        self._board.reported(fraction, label)

    def runtime(self, quantize: int | None = ..., **options: Any) -> Any:  # type: ignore[assignment]
        self._loading = {"quantize": self.model.resident_quantize if quantize is ... else quantize, **options}
        self._board.run.runtime_calls.append(self._loading)
        try:
            self._board.run.runtimes.append(runtime := super().runtime(quantize, **options))
        finally:
            self._loading = None
        return runtime

    def _publish(self, fraction: float | None, label: str | None) -> None:
        if self._loading is not None and label == "loading":  # the core's on_loading: a load starts
            self._board.run.loads.append(self._loading)
            self._board.run.events.append((None, "loading"))
            super()._publish(fraction, label)
            self._board.reported(None, "loading")
        else:
            super()._publish(fraction, label)


class _Worker(Worker):
    context_class = _RecordingJob


__all__ = ["CancelOn", "Event", "HandlerHarness", "HandlerRun", "Prepared", "file_ref"]
