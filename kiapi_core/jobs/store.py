"""Where job records live: a small interface and the in-memory default.

The :class:`~kiapi_core.jobs.manager.JobManager` is the only writer. It calls :meth:`JobStore.save`
after every mutation it wants kept, so a persistent store (SQLite under ``KIAPI_DATA_DIR``, or a
shared store several hosts read) can replace :class:`MemoryJobStore` without touching the
manager. The manager serialises all calls with its own lock, so stores need no locking of their
own.

Retention belongs to the store because only the store knows how records are kept: finished jobs
are forgotten after ``ttl_s`` seconds and beyond ``max_jobs`` (oldest finished first). Queued and
running jobs are never forgotten by retention.

Idempotency keys (``Idempotency-Key`` on POST operations) live with their job: a job may be
added with ``(scoped key, request fingerprint)`` and is found by that key for as long as the job
is kept; retention and delete forget the key together with the job.
"""

from __future__ import annotations

import abc
import time
from collections import OrderedDict
from collections.abc import Collection
from typing import NamedTuple

from ..errors import Conflict, InvalidRequest
from .models import Job, JobStatus


class IdempotentReplay(Exception):  # a signal, not an error
    """A submission's idempotency key names a kept job with the same request: answer with it."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.id)
        self.job = job


def idempotent_job(store: JobStore, key: str, fingerprint: str) -> Job | None:
    """The job kept under idempotency ``key``; Conflict (409 ``idempotency_conflict``) when it
    was submitted with a different request."""
    found = store.by_idempotency_key(key)
    if found is None:
        return None
    job, known = found
    if known != fingerprint:
        raise Conflict(f"this Idempotency-Key was already used for job {job.id} with a different "
                       "request body; use a new key for a new request",
                       code="idempotency_conflict", job_id=job.id,
                       headers={"X-Kiapi-Job-Id": job.id})
    return job


class JobPage(NamedTuple):
    """One page of a listing, newest first."""

    jobs: list[Job]
    has_more: bool


class JobStore(abc.ABC):
    """Job records by id, in creation order."""

    @abc.abstractmethod
    def add(self, job: Job, idempotency: tuple[str, str] | None = None) -> None:
        """Record a new job (status ``queued``), with its ``(idempotency key, fingerprint)``."""

    @abc.abstractmethod
    def by_idempotency_key(self, key: str) -> tuple[Job, str] | None:
        """The job added with idempotency ``key`` and its request fingerprint, or ``None``."""

    @abc.abstractmethod
    def save(self, job: Job) -> None:
        """The job changed; keep the new state. A job becoming terminal starts its retention."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job, or ``None`` when unknown or forgotten."""

    @abc.abstractmethod
    def remove(self, job_id: str) -> Job | None:
        """Forget a job; returns it, or ``None`` when it was unknown."""

    @abc.abstractmethod
    def page(self, *, status: Collection[JobStatus] | None = None, type: str | None = None,
             limit: int = 50, after: str | None = None) -> JobPage:
        """Jobs newest first, filtered by status and type, starting after the job id ``after``.

        Raises :class:`~kiapi_core.errors.InvalidRequest` (422) when ``after`` names no kept job.
        """

    @abc.abstractmethod
    def prune(self, now: float | None = None) -> list[str]:
        """Apply retention; returns the ids forgotten."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    def open(self) -> list[Job]:
        """Called once when the host starts serving: load persisted records. Returns the jobs
        that were queued or running when the previous server stopped, now ended ``failed``.
        Nothing to do in memory."""
        return []

    def flush(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Commit every change saved so far before returning (a store that writes behind).
        Called without the manager's lock. Nothing to do in memory."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources (connections, files). Nothing to do in memory."""


class MemoryJobStore(JobStore):
    """A dict in insertion (= creation) order; what a single host needs.

    ``ttl_s <= 0`` keeps finished jobs regardless of age; ``max_jobs <= 0`` keeps any number.
    """

    def __init__(self, *, ttl_s: float, max_jobs: int) -> None:
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self._jobs: dict[str, Job] = {}
        # Finished job ids in the order they finished: retention pops from the front, so pruning
        # costs only the records it removes.
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._idempotency: dict[str, tuple[str, str]] = {}  # key -> (job id, fingerprint)
        self._key_of: dict[str, str] = {}                     # job id -> key

    def add(self, job: Job, idempotency: tuple[str, str] | None = None) -> None:
        self._jobs[job.id] = job
        if idempotency is not None:
            key, fingerprint = idempotency
            self._idempotency[key] = (job.id, fingerprint)
            self._key_of[job.id] = key
        self.save(job)

    def by_idempotency_key(self, key: str) -> tuple[Job, str] | None:
        found = self._idempotency.get(key)
        if found is None or found[0] not in self._jobs:
            return None
        return self._jobs[found[0]], found[1]

    def _forget_key(self, job_id: str) -> None:
        key = self._key_of.pop(job_id, None)
        if key is not None:
            self._idempotency.pop(key, None)

    def save(self, job: Job) -> None:
        if job.id not in self._jobs:
            return  # forgotten meanwhile (deleted while running): do not resurrect it
        self._jobs[job.id] = job
        if job.status.terminal and job.id not in self._finished:
            self._finished[job.id] = job.finished_at or time.time()

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def remove(self, job_id: str) -> Job | None:
        self._finished.pop(job_id, None)
        self._forget_key(job_id)
        return self._jobs.pop(job_id, None)

    def page(self, *, status: Collection[JobStatus] | None = None, type: str | None = None,
             limit: int = 50, after: str | None = None) -> JobPage:
        ids = list(self._jobs)
        start = len(ids) - 1
        if after is not None:
            if after not in self._jobs:
                raise InvalidRequest(
                    f"the cursor after={after!r} names no kept job (it may have expired or been "
                    "deleted); list again without `after`", code="invalid_cursor", field="after")
            start = ids.index(after) - 1
        wanted = set(status) if status else None
        out: list[Job] = []
        for index in range(start, -1, -1):
            job = self._jobs[ids[index]]
            if wanted is not None and job.status not in wanted:
                continue
            if type is not None and job.type != type:
                continue
            if len(out) == limit:
                return JobPage(out, True)
            out.append(job)
        return JobPage(out, False)

    def prune(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        gone: list[str] = []
        while self._finished:
            job_id, finished_at = next(iter(self._finished.items()))
            too_old = self.ttl_s > 0 and now - finished_at >= self.ttl_s
            too_many = self.max_jobs > 0 and len(self._finished) > self.max_jobs
            if not (too_old or too_many):
                break
            self._finished.popitem(last=False)
            self._jobs.pop(job_id, None)
            self._forget_key(job_id)
            gone.append(job_id)
        return gone

    def __len__(self) -> int:
        return len(self._jobs)


__all__ = ["IdempotentReplay", "JobPage", "JobStore", "MemoryJobStore", "idempotent_job"]
