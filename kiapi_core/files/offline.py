"""Storage chores on a data directory whose server is stopped (``kiapi prune --data-dir``).

Holds the data-directory lock for the duration, so it never runs beside a server (which would
own the job store); opening the job store ends jobs a crash cut off, as a server start would.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..errors import NotFound
from ..jobs.models import JobStatus
from ..jobs.sqlite_store import SqliteJobStore
from ..jobs.store import JobPage
from ..lockfile import DataDirLock
from ..settings import Settings
from .retention import PruneRequest, PruneResult, usage
from .store import FileStore


class StoredJobs:
    """The part of the JobManager pruning needs, over a job store with no server."""

    def __init__(self, store: SqliteJobStore) -> None:
        self.store = store

    def list_jobs(self, *, status: Collection[JobStatus] | None = None, limit: int = 50,
                  after: str | None = None) -> JobPage:
        return self.store.page(status=status, limit=limit, after=after)

    def status_of(self, job_id: str) -> str | None:
        job = self.store.get(job_id)
        return None if job is None else job.status.value

    def delete(self, job_id: str) -> None:
        if self.store.remove(job_id) is None:
            raise NotFound(f"no job {job_id}")


def _open(settings: Settings) -> tuple[FileStore, SqliteJobStore]:
    data = settings.data_path
    jobs = SqliteJobStore(data / "jobs.sqlite3", ttl_s=settings.job_ttl_s, max_jobs=settings.max_jobs)
    jobs.open()
    keep = StoredJobs(jobs)
    files = FileStore(data / "files", ttl_s=settings.file_ttl_s, output_ttl_s=settings.job_ttl_s,
                      keep=lambda r: isinstance(r.meta.get("job_id"), str) and keep.status_of(r.meta["job_id"]) is not None)
    return files, jobs


def prune_data_dir(settings: Settings, body: PruneRequest) -> PruneResult:
    """Apply retention, then ``body``, to a stopped server's data directory (LockHeld if a
    server holds it)."""
    from .retention import run_prune

    with DataDirLock(settings.data_path):
        files, jobs = _open(settings)
        try:
            files.sweep_expired()  # what retention would have removed anyway
            return run_prune(files, StoredJobs(jobs), body)
        finally:
            jobs.close()


def usage_of_data_dir(settings: Settings) -> dict[str, Any]:
    from .retention import retention_of

    with DataDirLock(settings.data_path):
        files, jobs = _open(settings)
        try:
            figures = usage(files)
        finally:
            jobs.close()
    figures["retention"] = retention_of(settings)
    return figures
