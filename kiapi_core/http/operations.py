"""The request path of a capability operation, from HTTP body to job to response.

Everything that can reject a request happens before the job is queued: here the decode
(400/422), the model (400) and queue space (503); in the admission pipeline
(:mod:`kiapi_core.admission`, a service shared with the test harness) the weights (503), the
plugin's ``prepare`` (422), FileRef resolution (400), the plugin's ``check`` (in a thread) and
memory admission (503). Only then does the job reach the model thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..admission import Validated, validate
from ..admission import discard_inputs as _discard
from ..errors import (
    BadRequest,
    InvalidRequest,
    KiapiError,
    NotAcceptable,
    SyncTimeout,
)
from ..files.routes import file_response
from ..jobs.calls import call
from ..jobs.models import AsyncJobResponse, Job, JobStatus
from ..jobs.store import IdempotentReplay
from ..registry import Capability, Operation
from ..settings import DEMO_NOTE
from ..webhooks import take_webhook
from . import idempotency, negotiation
from .body import INLINE_DECODE_BYTES, BodyGate, check_json_content_type, decode_json, read_body
from .decode import decode_body
from .responses import JSONResponse, error_response

if TYPE_CHECKING:
    from ..host import Host

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A body of at most this many keys (``:`` bytes, an upper bound) and INLINE_DECODE_BYTES is
#: converted to its Struct on the event loop: its cost is bounded by the keys (a misspelt key
#: is compared with each declared name), and a worker thread costs two thread switches.
INLINE_DECODE_KEYS = 32
log = logging.getLogger("kiapi.http")


def operation_route(capability: Capability, operation: Operation) -> Route:
    decoder = msgspec.json.Decoder()  # typed conversion comes after, to report unknown fields

    async def endpoint(request: Request) -> Response:
        host: Host = request.app.state.host
        check_json_content_type(request)
        gate: BodyGate = request.app.state.body_gate
        async with gate.admit(request):  # large bodies: read, decode and submit a few at a time
            data = await read_body(request, host.settings.max_body_mb)
            raw = await decode_json(data, gate, decoder)
            inline = len(data) <= INLINE_DECODE_BYTES and data.count(b":") <= INLINE_DECODE_KEYS
            del data
            if request.headers.get(idempotency.HEADER) is None:
                idem = None
            else:  # the fingerprint re-encodes and hashes the body: not on the loop
                idem = await asyncio.to_thread(idempotency.from_request, request, raw,
                                               auth_token=host.settings.auth_token)
            replayed = await call(host.jobs, "find_idempotent", *idem) if idem is not None else None
            mode = raw.get("mode", "sync") if isinstance(raw, dict) else "sync"
            hook = None
            if replayed is None:
                hook = take_webhook(raw, enabled=host.webhooks.enabled)  # core fields, not the plugin's
                body, warnings = await _decode(host, capability, operation, raw, inline=inline)
                mode = getattr(body, "mode", "sync")
            del raw  # a large body's text is not kept while the job runs
            mode = "async" if operation.always_async else mode
            if replayed is None:
                if mode != "async":
                    check_acceptable(request, operation)  # 406 now, not after the job ran
                if hook is not None:
                    await host.webhooks.check_target(hook.url)
                try:
                    job = await submit(host, capability, operation, body, warnings, idempotency=idem)
                except IdempotentReplay as replay:  # an identical request won the race
                    replayed = replay.job
                else:
                    if hook is not None:  # at once: no event of the job is handled before this
                        host.webhooks.subscribe(job.id, hook)
            if replayed is not None:
                job = replayed
        try:
            return await _answer(host, request, job, mode, replayed=replayed is not None)
        except KiapiError as exc:
            raise _with_job(exc, job) from None
        except Exception as exc:  # the job exists: the client must learn its id
            log.exception("answering for job %s failed", job.id)
            raise _with_job(KiapiError(f"job {job.id} was queued, but answering failed "
                                       f"({exc.__class__.__name__}); follow it with GET /v1/jobs/{job.id}"),
                            job) from None

    return Route(f"{capability.prefix}/{operation.name}", endpoint, methods=["POST"],
                 name=f"{capability.name}.{operation.name}")


async def _answer(host: Host, request: Request, job: Job, mode: str, *, replayed: bool) -> Response:
    headers = {"X-Kiapi-Job-Id": job.id}
    if replayed:
        headers[idempotency.REPLAYED_HEADER] = "true"
    if job.warnings:
        headers["X-Kiapi-Warnings"] = header_text("; ".join(job.warnings), 2000)
    if mode == "async":
        headers["Location"] = f"/v1/jobs/{job.id}"
        return JSONResponse(AsyncJobResponse(job_id=job.id, type=job.type, status=job.status),
                            status_code=202, headers=headers)
    job = await host.jobs.wait(job.id, host.settings.sync_timeout_s)
    return await respond_finished(host, request, job, headers)


def header_text(text: str, limit: int) -> str:
    """``text`` as a legal header value: printable ASCII, everything else escaped (a client's
    field name may hold CR, LF or any other character), at most ``limit`` characters."""
    escaped = text[:limit].encode("ascii", "backslashreplace").decode()
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", escaped)[:limit]


def check_acceptable(request: Request, operation: Operation) -> None:
    """406 before queueing when ``Accept`` allows neither the Job JSON nor what the operation
    produces (the job would run and its result be thrown away)."""
    accept = request.headers.get("accept")
    if not accept or not operation.produces or negotiation.choose(accept, None) == "json":
        return
    if any(negotiation.choose(accept, media) for media in operation.produces):
        return
    offered = ", ".join(["application/json", *operation.produces])
    raise NotAcceptable(f"the Accept header ({accept[:200]}) allows none of what this operation "
                        f"answers: {offered}; send Accept: application/json (or */*)")


async def _decode(host: Host, capability: Capability, operation: Operation, raw: Any, *,
                  inline: bool = False) -> tuple[Any, list[str]]:
    """:func:`decode_body` in a thread (``inline``: on the loop); a 422 there also lists what
    ``prepare`` finds in the fields that did convert, so one answer names every problem of the
    request."""
    settings = host.settings
    try:
        if inline:
            return decode_body(raw, operation.request, unknown=settings.unknown_fields,
                               max_text_chars=settings.max_text_chars)
        return await asyncio.to_thread(decode_body, raw, operation.request, unknown=settings.unknown_fields,
                                       max_text_chars=settings.max_text_chars)
    except InvalidRequest as error:
        if operation.prepare is not None and isinstance(raw, dict):
            more = await asyncio.to_thread(_prepare_problems, host, capability, operation, raw, error)
            if more:
                raise _merged(error, more) from None
        raise


def _prepare_problems(host: Host, capability: Capability, operation: Operation, raw: dict[str, Any],
                      error: InvalidRequest) -> list[dict[str, str]]:
    """What ``prepare`` says about ``raw`` without the fields ``error`` already names."""
    listed = error.extra.get("errors") or [{"field": error.extra.get("field", "$")}]
    bad = {re.split(r"[.\[]", str(item["field"]))[0] for item in listed}
    try:
        body: Any = msgspec.convert({k: v for k, v in raw.items() if k not in bad}, operation.request)
        model = host.registry.resolve_model(capability.name, getattr(body, "model", None))
        assert operation.prepare is not None
        operation.prepare(body, model, host)
    except InvalidRequest as found:
        items = found.extra.get("errors") or [{"field": found.extra.get("field", "$"), "detail": found.detail}]
        return [item for item in items if re.split(r"[.\[]", str(item["field"]))[0] not in bad]
    except Exception:  # only a better message is at stake
        return []
    return []


def _merged(error: InvalidRequest, more: list[dict[str, str]]) -> InvalidRequest:
    items = (error.extra.get("errors") or [{"field": error.extra.get("field", "$"), "detail": error.detail}]) + more
    return InvalidRequest("; ".join(item["detail"] for item in items), errors=items)


async def submit(host: Host, capability: Capability, operation: Operation, body: Any,
                 warnings: list[str], idempotency: tuple[str, str] | None = None) -> Job:
    """Validate ``body`` completely, resolve its inputs and queue the job (IdempotentReplay
    when a job with the same idempotency key and request exists by then)."""
    model = host.registry.resolve_model(capability.name, getattr(body, "model", None))
    host.jobs.check_capacity()  # cheap 503s before any download or file check
    checked = await validate(host, capability, operation, body, model)
    try:
        if host.settings.demo:
            warnings = [*warnings, DEMO_NOTE]
        return await call(host.jobs, "submit", capability=capability, operation=operation, model=model,
                          request=body, params=checked.params, inputs=checked.inputs.files,
                          input_ids=checked.inputs.summary, warnings=warnings,
                          estimate_gb=checked.estimate_gb, idempotency=idempotency)
    except BaseException:
        await _discard(host, checked.inputs.created)
        raise


async def respond_finished(host: Host, request: Request, job: Job, headers: dict[str, str]) -> Response:
    """The answer to a sync request once its wait is over."""
    if not job.status.terminal:
        raise _with_job(SyncTimeout(
            f"{job.type} job {job.id} did not finish within {host.settings.sync_timeout_s:g}s "
            f"(KIAPI_SYNC_TIMEOUT_S); it keeps running: poll GET /v1/jobs/{job.id}. Send long runs "
            f"(large sizes, many steps: ERNIE base at its defaults) with \"mode\": \"async\""), job)
    if job.status in (JobStatus.failed, JobStatus.canceled):
        error = await call(host.jobs, "error_of", job.id) or KiapiError(job.error or "the job did not finish",
                                                          code=job.error_code or "internal_error")
        return error_response(error, job_id=job.id, headers=headers)
    artifact, data = None, None
    if len(job.artifacts) == 1:  # just stored by the worker: usually still in memory
        artifact, data = host.files.recent(job.artifacts[0]) or (await host.files.aget(job.artifacts[0]), None)
    choice = negotiation.choose(request.headers.get("accept"), artifact.content_type if artifact else None)
    if choice is None:
        offered = "application/json" + (f" or {artifact.content_type}" if artifact else "")
        raise _with_job(NotAcceptable(
            f"job {job.id} succeeded, but its result is only available as {offered}; "
            f"fetch it with GET /v1/jobs/{job.id}"), job)
    if choice == "json":
        return JSONResponse(job, headers=headers)
    assert artifact is not None
    file_id = artifact.file_id
    headers = {**headers, "X-Kiapi-File-Id": file_id}
    if data is not None:  # answered from memory: no disk read, no thread hop
        return await file_response(request, artifact, disposition="inline", headers=headers, data=data)
    return await file_response(request, lambda: host.files.get(file_id), disposition="inline", headers=headers)


def _with_job(error: KiapiError, job: Job) -> KiapiError:
    error.extra["job_id"] = job.id
    error.headers["X-Kiapi-Job-Id"] = job.id
    return error


__all__ = ["BadRequest", "Validated", "decode_body", "operation_route", "respond_finished", "submit", "validate"]
