"""What is stored and what may go: storage usage by kind, and pruning by age, size and status.

Kinds of stored files (from the record's ``meta``):

* ``output``: made by a job (``meta.job_id``); kept for ``KIAPI_JOB_TTL_S``, the same policy
  as the job record, and never deleted by expiry while its job record is still kept;
* ``upload``: sent with ``POST /v1/files``; kept for ``KIAPI_FILE_TTL_S`` (0: until deleted);
* ``input``: materialised from a URL or data URL input; same policy as uploads.

The policy is applied when a file is read and by the periodic sweep, from the file's
``created_at`` and the *current* settings, so changing a retention setting applies to files
stored before the change (see :class:`~kiapi_core.files.store.FileStore`).

Pruning is explicit (``kiapi prune``, ``POST /v1/files/prune``): the filters narrow the
candidates, and a size target then deletes the oldest candidates until the total fits.
Outputs of queued or running jobs are never candidates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

import msgspec

from ..errors import NotFound
from .blobstore import BlobStore
from .models import FileRecord

KINDS = ("output", "upload", "input")


def kind_of(record: FileRecord) -> str:
    if record.meta.get("job_id"):
        return "output"
    return "upload" if record.meta.get("source", "upload") == "upload" else "input"


def usage(store: BlobStore) -> dict[str, Any]:
    """Files and bytes per kind and in total (reads every sidecar: call off the event loop)."""
    kinds = {kind: {"files": 0, "bytes": 0} for kind in KINDS}
    oldest: float | None = None
    for record in store.list():
        figures = kinds[kind_of(record)]
        figures["files"] += 1
        figures["bytes"] += record.size
        oldest = record.created_at if oldest is None else min(oldest, record.created_at)
    return {
        "files": sum(k["files"] for k in kinds.values()),
        "bytes": sum(k["bytes"] for k in kinds.values()),
        "kinds": kinds,
        "oldest_created_at": oldest,
    }


class PruneRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/files/prune``: at least one of the criteria must be given."""

    #: Only files created at least this many seconds ago.
    older_than_s: float | None = msgspec.field(default=None)
    #: Only outputs of jobs with one of these final statuses (``failed``, ``canceled`` ...).
    job_status: list[str] | None = None
    #: Only these kinds (``output``, ``upload``, ``input``); default: all.
    kinds: list[str] | None = None
    #: Delete the oldest candidates until all stored files take at most this many bytes.
    max_total_bytes: int | None = None
    #: Report what would be deleted, delete nothing.
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.older_than_s is None and self.job_status is None and self.max_total_bytes is None:
            raise ValueError("give at least one of older_than_s, job_status or max_total_bytes")
        if self.older_than_s is not None and self.older_than_s < 0:
            raise ValueError("older_than_s must be >= 0")
        if self.max_total_bytes is not None and self.max_total_bytes < 0:
            raise ValueError("max_total_bytes must be >= 0")
        for status in self.job_status or ():
            if status not in ("succeeded", "failed", "canceled"):
                raise ValueError(f"job_status {status!r}: choose from succeeded, failed, canceled")
        for kind in self.kinds or ():
            if kind not in KINDS:
                raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")


class PruneResult(msgspec.Struct, kw_only=True):
    dry_run: bool
    deleted: list[str]
    deleted_bytes: int
    jobs_deleted: list[str]
    remaining_bytes: int


def select(records: list[FileRecord], request: PruneRequest, *,
           job_status: Callable[[str], str | None], now: float | None = None) -> list[FileRecord]:
    """The records ``request`` deletes. ``job_status(job_id)`` is a kept job's status or ``None``."""
    now = time.time() if now is None else now
    kinds: Collection[str] = request.kinds or KINDS
    statuses = set(request.job_status or ())
    candidates: list[FileRecord] = []
    for record in sorted(records, key=lambda r: r.file_id):  # ids sort by creation time
        kind = kind_of(record)
        if kind not in kinds:
            continue
        status = job_status(record.meta["job_id"]) if kind == "output" else None
        if status in ("queued", "running"):
            continue  # a job still writing outputs
        if request.older_than_s is not None and now - record.created_at < request.older_than_s:
            continue
        if statuses and status not in statuses:
            continue
        candidates.append(record)
    if request.max_total_bytes is None:
        return candidates
    excess = sum(r.size for r in records) - request.max_total_bytes
    chosen: list[FileRecord] = []
    for record in candidates:
        if excess <= 0:
            break
        chosen.append(record)
        excess -= record.size
    return chosen

def retention_of(settings: Any, quota: Any = None) -> dict[str, Any]:
    """The retention in force, and the storage quota (KIAPI_MAX_STORAGE_GB, or the one derived
    from the free disk space when it is unset)."""
    limit = getattr(quota, "limit_bytes", None)
    if limit is None and getattr(settings, "max_storage_gb", None):
        limit = int(settings.max_storage_gb * 1e9)
    return {"output_ttl_s": settings.job_ttl_s, "upload_ttl_s": settings.file_ttl_s,
            "job_ttl_s": settings.job_ttl_s, "quota_bytes": limit,
            "quota_configured": bool(getattr(quota, "configured", limit is not None))}


def run_prune(files: Any, jobs: Any, body: PruneRequest) -> PruneResult:
    """Prune ``files`` (a BlobStore) and ``jobs`` (anything with ``list_jobs``, ``status_of``
    and ``delete``: the JobManager, or a job store when the server is stopped)."""
    forget = _jobs_to_forget(jobs, body)
    result = _prune_files(files, jobs, body)
    if not body.dry_run:
        for job_id in forget:
            try:
                jobs.delete(job_id)
            except NotFound:
                pass
    result.jobs_deleted = forget
    return result


def _jobs_to_forget(jobs: Any, body: PruneRequest) -> list[str]:
    """Finished job records matching the status (and age) filters: a status prune forgets
    the jobs as well as their outputs."""
    if not body.job_status:
        return []
    from ..jobs.models import JobStatus

    statuses = [JobStatus(s) for s in body.job_status if s in ("succeeded", "failed", "canceled")]
    cutoff = None if body.older_than_s is None else time.time() - body.older_than_s
    found: list[str] = []
    after = None
    while statuses:
        page = jobs.list_jobs(status=statuses, limit=500, after=after)
        found += [j.id for j in page.jobs if cutoff is None or (j.finished_at or 0) <= cutoff]
        if not page.has_more:
            break
        after = page.jobs[-1].id
    return found


def _prune_files(files: Any, jobs: Any, body: PruneRequest) -> PruneResult:
    records = files.list()
    total = sum(r.size for r in records)
    chosen = select(records, body, job_status=jobs.status_of)
    deleted: list[str] = []
    freed = 0
    for record in chosen:
        if not body.dry_run:
            try:
                files.delete(record.file_id)
            except NotFound:
                continue
        deleted.append(record.file_id)
        freed += record.size
    return PruneResult(dry_run=body.dry_run, deleted=deleted, deleted_bytes=freed, jobs_deleted=[],
                       remaining_bytes=total - freed)


__all__ = ["KINDS", "PruneRequest", "PruneResult", "kind_of", "select", "usage"]
