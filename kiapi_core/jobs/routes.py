"""``/v1/jobs``: list, inspect (with long-poll), stream events (SSE), cancel and delete jobs.

Errors about one job carry its id (body ``job_id`` and ``X-Kiapi-Job-Id``), so a client never
loses the handle to the job it asked about.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..errors import InvalidRequest, KiapiError, NotFound
from ..http.responses import JSONResponse, error_response
from .calls import call
from .manager import JobManager
from .models import JobStatus

JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")
#: Longest long-poll (``?wait=``) in seconds; longer values are cut to this.
MAX_WAIT_S = 60.0
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Seconds between SSE keepalive comments, so proxies and clients do not time the stream out.
KEEPALIVE_S = 15.0

_encoder = msgspec.json.Encoder()


def _jobs(request: Request) -> JobManager:
    return request.app.state.host.jobs


def _job_id(request: Request) -> str:
    job_id = request.path_params["job_id"]
    if not JOB_ID.match(job_id):
        raise NotFound(f"no job {job_id!r}: job ids look like job_<32 lower-case hex digits>, "
                       "as returned when the job was submitted")
    return job_id


def _about_job(handler: Callable[[Request, str], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Validate the id, and answer errors about this job with its id."""

    async def endpoint(request: Request) -> Response:
        job_id = _job_id(request)
        try:
            return await handler(request, job_id)
        except KiapiError as exc:
            return error_response(exc, job_id=job_id)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def list_jobs(request: Request) -> Response:
    """Jobs newest first: ``?status=queued,running&type=ernie&limit=50&after=<job id>``."""
    query = request.query_params
    statuses: set[JobStatus] = set()
    for value in query.getlist("status"):
        for name in filter(None, (part.strip() for part in value.split(","))):
            try:
                statuses.add(JobStatus(name))
            except ValueError:
                raise InvalidRequest(
                    f"status={name!r} is not a job status; use one or more of "
                    + ", ".join(s.value for s in JobStatus) + " (comma-separated)",
                    field="status") from None
    limit = _number(query.get("limit"), "limit", DEFAULT_LIMIT, int)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    page = await call(_jobs(request), "list_jobs", status=statuses or None, type=query.get("type") or None, limit=limit,
                               after=query.get("after") or None)
    body: dict[str, Any] = {
        "object": "list", "data": page.jobs, "has_more": page.has_more,
        "first_id": page.jobs[0].id if page.jobs else None,
        "last_id": page.jobs[-1].id if page.jobs else None,
    }
    return JSONResponse(body)


@_about_job
async def get_job(request: Request, job_id: str) -> Response:
    """The job; with ``?wait=S`` answer once it changes (status, progress, label) or after S s."""
    jobs = _jobs(request)
    wait = _number(request.query_params.get("wait"), "wait", 0.0, float)
    if wait < 0:
        raise InvalidRequest("wait must be a number of seconds >= 0", field="wait")
    if wait > 0:
        job = await jobs.wait_change(job_id, min(wait, MAX_WAIT_S))
    else:
        job = await call(jobs, "get", job_id)
    return JSONResponse(job)


@_about_job
async def job_events(request: Request, job_id: str) -> Response:
    """Server-Sent Events: ``event: job`` with the Job JSON on every change, ending with the
    terminal state; ``: keepalive`` comments while nothing happens."""
    jobs = _jobs(request)
    await call(jobs, "get", job_id)  # 404 as JSON before the stream starts

    async def stream() -> AsyncIterator[bytes]:
        seq = 0
        async for job in jobs.events(job_id, keepalive_s=KEEPALIVE_S):
            if job is None:
                yield b": keepalive\n\n"
                continue
            seq += 1
            yield b"event: job\nid: %d\ndata: %s\n\n" % (seq, _encoder.encode(job))

    return StreamingResponse(stream(), media_type="text/event-stream", headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Kiapi-Job-Id": job_id})


@_about_job
async def cancel_job(request: Request, job_id: str) -> Response:
    """Cancel: a queued job ends ``canceled`` at once; a running one at its next step. Canceling
    a finished job changes nothing and answers it as it is."""
    return JSONResponse(await call(_jobs(request), "cancel", job_id))


@_about_job
async def delete_job(request: Request, job_id: str) -> Response:
    """Cancel the job if it is active, then forget it. Its artifacts stay in the Files API."""
    _, was_running = await call(_jobs(request), "delete", job_id)
    return JSONResponse({"deleted": True, "job_id": job_id, "was_running": was_running})


def _number(raw: str | None, name: str, default: Any, kind: type) -> Any:
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise InvalidRequest(f"{name}={raw!r} is not a valid {kind.__name__}", field=name) from None


def routes() -> list[Route]:
    return [
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}", delete_job, methods=["DELETE"]),
        Route("/v1/jobs/{job_id}/events", job_events, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    ]


__all__ = ["JOB_ID", "MAX_WAIT_S", "routes"]
