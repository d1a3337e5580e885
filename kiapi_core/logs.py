"""Logging for a running server: text or JSON lines, job lifecycle lines, model-library output.

* :func:`configure` installs one stderr handler on the root logger, formatting ``text``
  (``… INFO kiapi.jobs: job job_… succeeded in 2.31 s: ernie/generate (turbo) …``) or ``json``
  (one object per line: ``ts``, ``level``, ``logger``, ``msg`` and the structured fields a
  line carries: ``event``, ``job_id``, ``capability``, ``operation``, ``model``, timings,
  memory …), for log shippers (``KIAPI_LOG_FORMAT``).
* :class:`JobLifecycleLog` is a job listener: one line per ``queued``, ``started`` and end
  (``succeeded``/``failed``/``canceled``) with the job's id, capability, operation, model,
  wait and run times and measured memory. Model loads are logged by the memory manager
  (``event: model_loaded``), HTTP requests by :mod:`kiapi_core.http.observe` (``event: http``).
* :func:`capture_model_output` turns what model libraries print on the model thread (mflux's
  progress and emoji lines, warnings) into ``kiapi.models`` log records at DEBUG level, instead
  of raw text interleaved with the log. Output of other threads passes through unchanged.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from .jobs.models import Job

#: Attributes every LogRecord has; anything else on a record came in ``extra=`` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}
MODEL_THREAD = "kiapi-model-worker"
jobs_log = logging.getLogger("kiapi.jobs")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """One handler on the root logger (replacing earlier ones); returns it."""
    handler = logging.StreamHandler(stream or sys.__stderr__)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # library warnings become log records (py.warnings)
    for chatty in ("httpx", "httpcore"):  # one INFO line per webhook delivery or URL fetch
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    return handler


class JobLifecycleLog:
    """A job listener (``JobManager.listeners``): one log line per lifecycle event."""

    def __init__(self, registry: Any = ()) -> None:
        self.operations = {(c.name, op.job_type): op.name for c in registry for op in c.operations}

    def __call__(self, event: str, job: Job) -> None:
        if event != "progress" and jobs_log.isEnabledFor(logging.INFO):
            operation = self.operations.get((job.capability or "", job.type), job.type)
            log_job_event(event, job, operation)


def log_job_event(event: str, job: Job, operation: str) -> None:
    fields: dict[str, Any] = {"event": f"job_{event}", "job_id": job.id, "capability": job.capability,
                              "operation": operation, "job_type": job.type, "model": job.model}
    what = f"{job.capability}/{operation} ({job.model})"
    if event == "queued":
        fields["queue_position"] = job.queue_position
        jobs_log.info("job %s queued: %s (position %s)", job.id, what, job.queue_position, extra=fields)
    elif event == "started":
        fields["wait_s"] = round((job.started_at or time.time()) - job.created_at, 3)
        jobs_log.info("job %s started: %s after %.2f s in the queue", job.id, what, fields["wait_s"], extra=fields)
    elif event == "finished":
        fields["event"] = f"job_{job.status.value}"
        fields["status"] = job.status.value
        if job.started_at is not None:
            fields["wait_s"] = round(job.started_at - job.created_at, 3)
            fields["run_s"] = round((job.finished_at or time.time()) - job.started_at, 3)
        for key in ("peak_gb", "estimate_gb", "load_s", "admitted_gb"):
            if key in job.metrics:
                fields[key] = job.metrics[key]
        if job.error_code:
            fields["error_code"] = job.error_code
        took = f" in {fields['run_s']:.2f} s" if "run_s" in fields else ""
        memory = f", peak {fields['peak_gb']} GiB" if "peak_gb" in fields else ""
        error = f": {job.error_code}" if job.error_code else ""
        jobs_log.info("job %s %s%s: %s%s%s", job.id, job.status.value, took, what, memory, error, extra=fields)


class _ModelThreadStream(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: the model thread's writes become log records."""

    def __init__(self, original: TextIO, name: str) -> None:
        self.original = original
        self.log = logging.getLogger(f"kiapi.models.{name}")
        self._buffers = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if threading.current_thread().name != MODEL_THREAD:
            return self.original.write(text)
        buffer = getattr(self._buffers, "text", "") + text.replace("\r", "\n")
        *lines, self._buffers.text = buffer.split("\n")
        for line in lines:
            if line.strip():
                self.log.debug("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if threading.current_thread().name != MODEL_THREAD:
            self.original.flush()

    def isatty(self) -> bool:
        return False  # progress bars draw nothing fancy into a log

    def fileno(self) -> int:
        return self.original.fileno()


def capture_model_output() -> None:
    """Route the model thread's prints into the log (DEBUG); call once when serving."""
    if not isinstance(sys.stdout, _ModelThreadStream):
        sys.stdout = _ModelThreadStream(sys.stdout, "stdout")
    if not isinstance(sys.stderr, _ModelThreadStream):
        sys.stderr = _ModelThreadStream(sys.stderr, "stderr")


__all__ = ["JobLifecycleLog", "JsonFormatter", "capture_model_output", "configure", "log_job_event"]
