"""The in-process job backend and event bus: the contract on one host's memory.

Used by the backend contract suite (the same tests run against PostgreSQL) and as the
reference for what each operation means. Leases run on ``time.monotonic`` here and on the
database clock there; the semantics are the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from dataclasses import dataclass

import msgspec

from ..errors import InvalidRequest, QueueFull
from ..jobs.models import Job, JobStatus
from ..jobs.store import JobPage
from .interfaces import (
    Claim,
    ClaimerState,
    EventBus,
    Fenced,
    HostState,
    JobBackend,
    PersistedError,
    QueuedNeed,
    Submission,
    lost,
    replay,
    requeued,
)

_copy = msgspec.structs.replace


@dataclass
class _Row:
    seq: int
    job: Job
    request: bytes
    need_gb: float
    load_gb: float
    queued_at: float
    idem: tuple[str, str] | None = None
    light: bool = False
    owner: str | None = None
    attempt: int = 0
    lease_until: float | None = None
    cancel_requested: bool = False
    error: PersistedError | None = None


def _snap(row: _Row) -> Job:
    job = row.job
    return _copy(job, artifacts=list(job.artifacts), warnings=list(job.warnings), metrics=dict(job.metrics),
                 params=dict(job.params))


class LocalJobBackend(JobBackend):
    """Dicts under one lock. ``bus`` (optional) hears what the PostgreSQL backend would notify."""

    def __init__(self, bus: LocalEventBus | None = None) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self._keys: dict[str, str] = {}
        self._hosts: dict[str, tuple[float, HostState]] = {}
        self._seq = 0
        self._bus = bus

    def _emit(self, kind: str, job_id: str = "") -> None:
        if self._bus is not None:
            {"job": self._bus.job_changed, "cancel": self._bus.cancel_requested,
             "work": lambda _: self._bus.work_available()}[kind](job_id)  # type: ignore[union-attr]

    # --- records ------------------------------------------------------------------------
    def submit(self, submission: Submission, *, max_queue: int) -> Job:
        job = submission.job
        with self._lock:
            if submission.idempotency is not None:
                key, fp = submission.idempotency
                known = self._rows.get(self._keys.get(key, ""))
                if known is not None and known.idem is not None:
                    replay(_snap(known), known.idem[1], fp)
            queued = self._queued()
            if queued >= max_queue:
                raise QueueFull(f"the cluster's job queue is full ({max_queue} jobs waiting); retry later",
                                headers={"Retry-After": "10"}, max_queue=max_queue)
            self._seq += 1
            job.queue_position = queued
            self._rows[job.id] = _Row(self._seq, _copy(job), submission.request, submission.need_gb,
                                      submission.load_gb, time.monotonic(), submission.idempotency,
                                      submission.light)
            if submission.idempotency is not None:
                self._keys[submission.idempotency[0]] = job.id
        self._emit("work")
        self._emit("job", job.id)
        return job

    def _queued(self) -> int:
        return sum(1 for r in self._rows.values() if r.job.status is JobStatus.queued)

    def _view(self, row: _Row) -> Job:
        job = _snap(row)
        job.queue_position = (sum(1 for r in self._rows.values() if r.job.status is JobStatus.queued
                                  and r.seq < row.seq) if job.status is JobStatus.queued else None)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._rows.get(job_id)
            return None if row is None else self._view(row)

    def find_idempotent(self, key: str) -> tuple[Job, str] | None:
        with self._lock:
            row = self._rows.get(self._keys.get(key, ""))
            return None if row is None or row.idem is None else (self._view(row), row.idem[1])

    def page(self, *, status: Collection[JobStatus] | None = None, type: str | None = None,
             limit: int = 50, after: str | None = None) -> JobPage:
        with self._lock:
            rows = sorted(self._rows.values(), key=lambda r: -r.seq)
            if after is not None:
                if after not in self._rows:
                    raise InvalidRequest(f"the cursor after={after!r} names no kept job (it may have expired or "
                                         "been deleted); list again without `after`", code="invalid_cursor",
                                         field="after")
                rows = [r for r in rows if r.seq < self._rows[after].seq]
            rows = [r for r in rows if (not status or r.job.status in status) and (type is None or r.job.type == type)]
            return JobPage([self._view(r) for r in rows[:limit]], len(rows) > limit)

    def remove(self, job_id: str) -> tuple[Job, bool] | None:
        with self._lock:
            row = self._rows.pop(job_id, None)
            if row is None:
                return None
            if row.idem is not None:
                self._keys.pop(row.idem[0], None)
        self._emit("cancel", job_id)
        self._emit("job", job_id)
        return _snap(row), row.job.status is JobStatus.running

    def error_of(self, job_id: str) -> PersistedError | None:
        with self._lock:
            row = self._rows.get(job_id)
            return None if row is None else row.error

    def cancel(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._rows.get(job_id)
            if row is None:
                return None
            job = row.job
            kind = ""
            if job.status is JobStatus.queued:
                job.status, job.finished_at, job.progress_label = JobStatus.canceled, time.time(), "canceled"
                row.error = PersistedError(status=409, code="canceled", detail=f"job {job_id} was canceled")
                kind = "job"
            elif job.status is JobStatus.running:
                row.cancel_requested = True
                kind = "cancel"
            result = self._view(row)
        if kind:
            self._emit(kind, job_id)
        return result

    def queued(self) -> int:
        with self._lock:
            return self._queued()

    def queued_needs(self, limit: int) -> list[QueuedNeed]:
        with self._lock:
            rows = sorted((r for r in self._rows.values() if r.job.status is JobStatus.queued), key=lambda r: r.seq)
            return [QueuedNeed(r.job.id, r.job.capability or "", f"{r.job.capability}:{r.job.model}", r.need_gb,
                               r.load_gb, r.light, r.job.progress_label) for r in rows[:limit]]

    def relabel(self, job_id: str, label: str) -> bool:
        with self._lock:
            row = self._rows.get(job_id)
            if row is None or row.job.status is not JobStatus.queued:
                return False
            row.job.progress_label = label
        self._emit("job", job_id)
        return True

    def prune(self, *, ttl_s: float, max_jobs: int) -> list[str]:
        now = time.time()
        with self._lock:
            done = sorted((r for r in self._rows.values() if r.job.finished_at is not None),
                          key=lambda r: -(r.job.finished_at or 0.0))
            gone = [r.job.id for i, r in enumerate(done)
                    if (ttl_s > 0 and (r.job.finished_at or 0.0) <= now - ttl_s) or (max_jobs > 0 and i >= max_jobs)]
            for job_id in gone:
                row = self._rows.pop(job_id)
                if row.idem is not None:
                    self._keys.pop(row.idem[0], None)
            return gone

    # --- owner side ---------------------------------------------------------------------
    def _live_resident(self, me: str, live_s: float) -> set[str]:
        now = time.monotonic()
        return {m for host_id, (at, h) in self._hosts.items()
                if host_id != me and now - at <= live_s and not h.draining for m in h.resident}

    def claim(self, claimer: ClaimerState) -> Claim | None:
        now = time.monotonic()
        with self._lock:
            elsewhere = self._live_resident(claimer.host_id, max(claimer.lease_s, 1.0))
            for row in sorted(self._rows.values(), key=lambda r: r.seq):
                job = row.job
                key = f"{job.capability}:{job.model}"
                resident = key in claimer.resident
                if (job.status is not JobStatus.queued or job.capability not in claimer.capabilities
                        or job.id in claimer.exclude or row.light != claimer.light
                        or row.need_gb + (0.0 if resident else row.load_gb) > claimer.claimable_gb):
                    continue
                if not (row.light or resident or now - row.queued_at >= claimer.affinity_wait_s
                        or key not in elsewhere):
                    continue
                row.attempt += 1
                row.owner, row.lease_until = claimer.host_id, now + claimer.lease_s
                job.status, job.started_at, job.progress, job.progress_label = (JobStatus.running, time.time(), 0.0,
                                                                                "running")
                claim = Claim(self._view(row), row.attempt, row.request)
                break
            else:
                return None
        self._emit("job", claim.job.id)
        return claim

    def _owned(self, job_id: str, owner: str, attempt: int) -> _Row:
        row = self._rows.get(job_id)
        if row is None or row.owner != owner or row.attempt != attempt or row.job.status is not JobStatus.running:
            raise Fenced(job_id)
        return row

    def renew(self, job_id: str, owner: str, attempt: int, lease_s: float) -> bool:
        with self._lock:
            try:
                self._owned(job_id, owner, attempt).lease_until = time.monotonic() + lease_s
            except Fenced:
                return False
            return True

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._rows.get(job_id)
            return row is None or row.cancel_requested

    def write(self, job: Job, owner: str, attempt: int) -> None:
        with self._lock:
            row = self._owned(job.id, owner, attempt)
            row.job = _copy(job, status=JobStatus.running)
        self._emit("job", job.id)

    def finish(self, job: Job, owner: str, attempt: int, error: PersistedError | None) -> None:
        with self._lock:
            row = self._owned(job.id, owner, attempt)
            row.job, row.error, row.lease_until = _copy(job), error, None
        self._emit("job", job.id)
        self._emit("work")

    def release(self, job_id: str, owner: str, attempt: int, reason: str | None = None) -> None:
        with self._lock:
            row = self._owned(job_id, owner, attempt)
            requeued(row.job, reason)
            row.owner, row.lease_until, row.attempt = None, None, row.attempt - 1
        self._emit("job", job_id)
        self._emit("work")

    def reap(self, *, max_attempts: int) -> list[tuple[Job, list[str]]]:
        now = time.monotonic()
        out: list[tuple[Job, list[str]]] = []
        with self._lock:
            for row in self._rows.values():
                if row.job.status is JobStatus.running and row.lease_until is not None and row.lease_until < now:
                    gone = list(row.job.artifacts)
                    row.error = lost(row.job, row.owner, row.attempt, max_attempts)
                    row.owner, row.lease_until, row.cancel_requested = None, None, False
                    out.append((self._view(row), gone))
        for job, _ in out:
            self._emit("job", job.id)
        if out:
            self._emit("work")
        return out

    # --- hosts --------------------------------------------------------------------------
    def heartbeat(self, state: HostState) -> None:
        with self._lock:
            self._hosts[state.id] = (time.monotonic(), _copy(state))

    def hosts(self, *, live_s: float) -> list[HostState]:
        now = time.monotonic()
        with self._lock:
            out = []
            for host_id in sorted(self._hosts):
                at, state = self._hosts[host_id]
                age = round(now - at, 3)
                out.append(_copy(state, heartbeat_age_s=age, live=age <= live_s))
            return out

    def leave(self, host_id: str) -> None:
        with self._lock:
            self._hosts.pop(host_id, None)


class LocalEventBus(EventBus):
    """Calls the receivers directly, on the caller's thread."""

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def job_changed(self, job_id: str) -> None:
        self.on_job(job_id)

    def cancel_requested(self, job_id: str) -> None:
        self.on_cancel(job_id)
        self.on_job(job_id)

    def work_available(self) -> None:
        self.on_work()


__all__ = ["LocalEventBus", "LocalJobBackend"]
