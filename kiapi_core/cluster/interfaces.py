"""What a cluster needs from shared storage: a job backend, an event bus and a blob store.

The job backend owns the job records *and* the queue. A host's worker thread claims a job only
when the model thread is free, under a predicate (capability served, fits the memory, model
affinity); while it runs the job it holds a lease it renews, and every write it makes is fenced
by ``(owner, attempt)``: once the lease was lost (the host stalled, the network split) and the
job was reaped and given to another host, a late write from the first owner changes nothing.

The event bus carries ids only (job changed, cancel requested, work available); receivers
re-read the record, so a lost or duplicated message is harmless and a reconnect resyncs by
waking everybody. The lease renewal doubles as the fallback for a lost cancel.

Two implementations: :mod:`kiapi_core.cluster.local` (in-process, what one host needs) and
:mod:`kiapi_core.cluster.pg` (PostgreSQL). The contract suite (tests/test_cluster_backend.py)
runs against both.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Collection
from typing import NamedTuple

import msgspec

from ..errors import Conflict
from ..files.blobstore import BlobStore
from ..jobs.models import Job, JobStatus
from ..jobs.store import IdempotentReplay, JobPage


class HostState(msgspec.Struct, kw_only=True):
    """One host as the registry shows it (``GET /v1/cluster/hosts``)."""

    id: str
    url: str | None = None
    role: str = "all"
    capabilities: list[str] = msgspec.field(default_factory=list)
    #: ``family:model`` of the models resident in memory.
    resident: list[str] = msgspec.field(default_factory=list)
    budget_gb: float = 0.0
    free_gb: float = 0.0
    running_job: str | None = None
    draining: bool = False
    version: str = ""
    started_at: float = 0.0
    heartbeat_age_s: float | None = None
    live: bool = True


class Submission(NamedTuple):
    """What running a job on any host needs beyond its record."""

    job: Job
    #: The request body as JSON (decoded again into the operation's Struct by the runner).
    request: bytes
    #: Peak GB of the job itself, and GB of the model weights it loads when not resident.
    need_gb: float
    load_gb: float
    #: ``(scoped key, fingerprint)`` of an Idempotency-Key, or ``None``.
    idempotency: tuple[str, str] | None = None


class Claim(NamedTuple):
    job: Job
    attempt: int
    request: bytes


class ClaimerState(NamedTuple):
    """What the claim predicate compares a queued job with."""

    host_id: str
    capabilities: Collection[str]
    resident: Collection[str]
    #: GB the job plus any model load may take (the budget minus what cannot be evicted).
    claimable_gb: float
    affinity_wait_s: float
    lease_s: float
    #: Jobs this host refused after claiming them (left to others for a while).
    exclude: Collection[str] = ()


class PersistedError(msgspec.Struct, kw_only=True):
    """A failed or canceled job's answer for a sync caller on any host."""

    status: int
    code: str
    detail: str


class Fenced(Exception):  # a signal
    """The writer no longer owns the job (lease lost, job reaped or deleted)."""


#: ``error_code`` of a job whose hosts were lost ``KIAPI_CLUSTER_MAX_ATTEMPTS`` times.
HOST_LOST = "host_lost"


def requeued(job: Job) -> Job:
    """The job back in the queue: never started, no artifacts."""
    job.status, job.started_at, job.progress, job.progress_label = JobStatus.queued, None, None, "queued"
    job.artifacts = []
    return job


def lost(job: Job, owner: str | None, attempt: int, max_attempts: int) -> PersistedError | None:
    """A job whose lease expired: re-queued with a warning (``None``), or failed ``host_lost``
    (returns the error for sync callers)."""
    if attempt < max_attempts:
        requeued(job)
        job.warnings.append(f"host {owner} was lost while running attempt {attempt}; the job was run "
                            "again from the start (its earlier artifacts were removed)")
        return None
    job.status, job.finished_at, job.progress_label = JobStatus.failed, time.time(), "failed"
    job.error_code = HOST_LOST
    job.error = f"the host running the job ({owner}) stopped answering, {attempt} time(s); submit it again"
    return PersistedError(status=503, code=HOST_LOST, detail=job.error)


def replay(job: Job, known_fingerprint: str, fingerprint: str) -> None:
    """Raise IdempotentReplay (same request) or Conflict (409, another request) for a kept key."""
    if known_fingerprint != fingerprint:
        raise Conflict(f"this Idempotency-Key was already used for job {job.id} with a different "
                       "request body; use a new key for a new request",
                       code="idempotency_conflict", job_id=job.id, headers={"X-Kiapi-Job-Id": job.id})
    raise IdempotentReplay(job)


class JobBackend(abc.ABC):
    """Job records, the queue, the host registry. Calls block: use them off the event loop."""

    # --- records ------------------------------------------------------------------------
    @abc.abstractmethod
    def submit(self, submission: Submission, *, max_queue: int) -> Job:
        """Queue a job. Raises IdempotentReplay / Conflict for a known key, QueueFull."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    def find_idempotent(self, key: str) -> tuple[Job, str] | None: ...

    @abc.abstractmethod
    def page(self, *, status: Collection[JobStatus] | None = None, type: str | None = None,
             limit: int = 50, after: str | None = None) -> JobPage: ...

    @abc.abstractmethod
    def remove(self, job_id: str) -> tuple[Job, bool] | None:
        """Cancel if active, then forget; ``(last state, was running)``."""

    @abc.abstractmethod
    def error_of(self, job_id: str) -> PersistedError | None: ...

    @abc.abstractmethod
    def cancel(self, job_id: str) -> Job | None:
        """Queued → canceled now; running → cancel requested (the owner stops it)."""

    @abc.abstractmethod
    def queued(self) -> int: ...

    @abc.abstractmethod
    def prune(self, *, ttl_s: float, max_jobs: int) -> list[str]: ...

    # --- owner side ---------------------------------------------------------------------
    @abc.abstractmethod
    def claim(self, claimer: ClaimerState) -> Claim | None:
        """Take the oldest queued job the predicate allows, mark it running under a lease."""

    @abc.abstractmethod
    def renew(self, job_id: str, owner: str, attempt: int, lease_s: float) -> bool:
        """Extend the lease; False when fenced. Returns also whether a cancel is requested
        through :meth:`cancel_requested`."""

    @abc.abstractmethod
    def cancel_requested(self, job_id: str) -> bool: ...

    @abc.abstractmethod
    def write(self, job: Job, owner: str, attempt: int) -> None:
        """Save a running job's record; raises Fenced."""

    @abc.abstractmethod
    def finish(self, job: Job, owner: str, attempt: int, error: PersistedError | None) -> None:
        """Save the terminal record (and the sync caller's error); raises Fenced."""

    @abc.abstractmethod
    def release(self, job_id: str, owner: str, attempt: int) -> None:
        """Give a claimed job back to the queue without counting the attempt."""

    @abc.abstractmethod
    def reap(self, *, max_attempts: int) -> list[tuple[Job, list[str]]]:
        """Jobs whose lease expired: re-queued (with a warning) or failed ``host_lost``.
        Returns them with the artifacts of the lost attempt, which the caller deletes."""

    # --- hosts --------------------------------------------------------------------------
    @abc.abstractmethod
    def heartbeat(self, state: HostState) -> None: ...

    @abc.abstractmethod
    def hosts(self, *, live_s: float) -> list[HostState]: ...

    @abc.abstractmethod
    def leave(self, host_id: str) -> None: ...

    def prepare(self) -> None:  # noqa: B027 - optional
        """Create what the backend needs (tables); called once when the host starts serving."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


class EventBus(abc.ABC):
    """Ids only; receivers re-read. Callbacks run on the bus's own thread."""

    def __init__(self) -> None:
        self.on_job: Callable[[str], None] = lambda job_id: None
        self.on_cancel: Callable[[str], None] = lambda job_id: None
        self.on_work: Callable[[], None] = lambda: None
        #: After a reconnect: anything may have been missed, re-read everything watched.
        self.on_resync: Callable[[], None] = lambda: None

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def job_changed(self, job_id: str) -> None: ...

    @abc.abstractmethod
    def cancel_requested(self, job_id: str) -> None: ...

    @abc.abstractmethod
    def work_available(self) -> None: ...


__all__ = ["HOST_LOST", "lost", "replay", "requeued", "BlobStore", "Claim", "ClaimerState", "EventBus", "Fenced", "HostState", "JobBackend", "PersistedError",
           "Submission"]
