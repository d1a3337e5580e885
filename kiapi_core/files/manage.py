"""Keeping storage tidy over HTTP: usage by kind, bulk delete and prune.

* ``GET /v1/files/usage``: files and bytes per kind (output, upload, input) and the
  retention in force;
* ``DELETE /v1/files`` with ``{"file_ids": [...]}``: delete many files at once (up to 1000);
  ids that are already gone are reported, not an error;
* ``POST /v1/files/prune``: delete by age, job status and a total size target, with
  ``dry_run`` (see :mod:`.retention`).

These routes must be mounted before ``/v1/files/{file_id}`` so that ``usage`` is not taken
for a file id.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import InvalidRequest, MalformedJSON, NotFound
from ..http.responses import JSONResponse
from .names import ID_FORM, valid_id
from .retention import PruneRequest, PruneResult, select, usage

MAX_BULK = 1000


class BulkDelete(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    file_ids: list[str]


def routes() -> list[Route]:
    return [
        Route("/v1/files/usage", get_usage, methods=["GET"], name="files:usage"),
        Route("/v1/files/prune", prune, methods=["POST"], name="files:prune"),
        Route("/v1/files", bulk_delete, methods=["DELETE"], name="files:bulk_delete"),
    ]


async def get_usage(request: Request) -> Response:
    host = request.app.state.host
    figures = await asyncio.to_thread(usage, host.files)
    figures["retention"] = retention_of(host.settings, getattr(host.files, "quota", None))
    return JSONResponse(figures)


def retention_of(settings: Any, quota: Any = None) -> dict[str, Any]:
    """The retention in force, and the storage quota (KIAPI_MAX_STORAGE_GB, or the one derived
    from the free disk space when it is unset)."""
    limit = getattr(quota, "limit_bytes", None)
    if limit is None and getattr(settings, "max_storage_gb", None):
        limit = int(settings.max_storage_gb * 1e9)
    return {"output_ttl_s": settings.job_ttl_s, "upload_ttl_s": settings.file_ttl_s,
            "job_ttl_s": settings.job_ttl_s, "quota_bytes": limit,
            "quota_configured": bool(getattr(quota, "configured", limit is not None))}


async def _body(request: Request, schema: type) -> Any:
    data = await request.body()
    if len(data) > 1024 * 1024:
        raise InvalidRequest("the request body is over 1 MiB; send fewer ids per request")
    try:
        return msgspec.json.decode(data or b"{}", type=schema)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None


async def bulk_delete(request: Request) -> Response:
    """``DELETE /v1/files`` ``{"file_ids": [...]}`` → ``{"deleted": [...], "not_found": [...]}``."""
    body: BulkDelete = await _body(request, BulkDelete)
    if not body.file_ids or len(body.file_ids) > MAX_BULK:
        raise InvalidRequest(f"file_ids must list 1 to {MAX_BULK} file ids", field="file_ids")
    bad = [i for i in body.file_ids if not valid_id(i)]
    if bad:
        raise InvalidRequest(f"not file ids ({ID_FORM}): {', '.join(bad[:5])}", field="file_ids")
    store = request.app.state.host.files

    def run() -> tuple[list[str], list[str]]:
        deleted, missing = [], []
        for file_id in dict.fromkeys(body.file_ids):
            try:
                store.delete(file_id)
                deleted.append(file_id)
            except NotFound:
                missing.append(file_id)
        return deleted, missing

    deleted, missing = await asyncio.to_thread(run)
    return JSONResponse({"deleted": deleted, "not_found": missing})


async def prune(request: Request) -> Response:
    """``POST /v1/files/prune``: see :class:`~kiapi_core.files.retention.PruneRequest`."""
    body: PruneRequest = await _body(request, PruneRequest)
    host = request.app.state.host
    return JSONResponse(await asyncio.to_thread(run_prune, host.files, host.jobs, body))


def run_prune(files: Any, jobs: Any, body: PruneRequest) -> PruneResult:
    """Prune ``files`` (a FileStore) and ``jobs`` (anything with ``list_jobs``, ``status_of``
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
    import time

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
