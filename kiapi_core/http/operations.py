"""The request path of a capability operation, from HTTP body to job to response.

Everything that can reject a request happens here, on the event loop and before the job is
queued: decode (400/422), model (400), weights (503), the plugin's ``prepare`` (422), FileRef
resolution (400), the plugin's ``check`` (in a thread), memory admission (503), queue space
(503). Only then does the job reach the model thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import (
    BadRequest,
    InvalidRequest,
    KiapiError,
    NotAcceptable,
    SyncTimeout,
    WeightsMissing,
)
from ..files.resolve import ResolvedInputs, resolve_inputs
from ..files.routes import file_response
from ..images import INPUT_BYTES_PER_PIXEL
from ..jobs.calls import call
from ..jobs.models import AsyncJobResponse, Job, JobStatus
from ..jobs.store import IdempotentReplay
from ..memory.loaders import INPUT_GB
from ..registry import Capability, Model, Operation
from ..settings import DEMO_NOTE
from ..validation import ref_summary
from ..weights import missing_message, status
from . import idempotency, negotiation
from .body import BodyGate, check_json_content_type, decode_json, read_body
from .decode import decode_body
from .responses import JSONResponse, error_response

if TYPE_CHECKING:
    from ..host import Host

#: Request fields the core itself interprets; they are not recorded as ignored.
_CORE_FIELDS = ("mode", "model")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
log = logging.getLogger("kiapi.http")


def operation_route(capability: Capability, operation: Operation) -> Route:
    decoder = msgspec.json.Decoder()  # typed conversion comes after, to report unknown fields

    async def endpoint(request: Request) -> Response:
        host: Host = request.app.state.host
        check_json_content_type(request)
        gate: BodyGate = request.app.state.body_gate
        async with gate.admit(request):  # large bodies: read, decode and submit a few at a time
            raw = await decode_json(await read_body(request, host.settings.max_body_mb), gate, decoder)
            if request.headers.get(idempotency.HEADER) is None:
                idem = None
            else:  # the fingerprint re-encodes and hashes the body: not on the loop
                idem = await asyncio.to_thread(idempotency.from_request, request, raw,
                                               auth_token=host.settings.auth_token)
            replayed = await call(host.jobs, "find_idempotent", *idem) if idem is not None else None
            mode = raw.get("mode", "sync") if isinstance(raw, dict) else "sync"
            if replayed is None:
                body, warnings = await _decode(host, capability, operation, raw)
                mode = getattr(body, "mode", "sync")
            del raw  # a large body's text is not kept while the job runs
            mode = "async" if operation.always_async else mode
            if replayed is None:
                if mode != "async":
                    check_acceptable(request, operation)  # 406 now, not after the job ran
                try:
                    job = await submit(host, capability, operation, body, warnings, idempotency=idem)
                except IdempotentReplay as replay:  # an identical request won the race
                    replayed = replay.job
            if replayed is not None:
                job = replayed
        try:
            return await _answer(host, request, job, mode, replayed=replayed is not None)
        except KiapiError as exc:
            raise _with_job(exc, job) from None
        except Exception as exc:  # noqa: BLE001 - the job exists: the client must learn its id
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


async def _decode(host: Host, capability: Capability, operation: Operation, raw: Any) -> tuple[Any, list[str]]:
    """:func:`decode_body` in a thread; a 422 there also lists what ``prepare`` finds in the
    fields that did convert, so one answer names every problem of the request."""
    settings = host.settings
    try:
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
    except Exception:  # noqa: BLE001 - only a better message is at stake
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


@dataclass
class Validated:
    """What :func:`validate` accepted: the job's params, its resolved inputs and memory need."""

    model: Model
    params: dict[str, Any]
    inputs: ResolvedInputs
    estimate_gb: float


async def validate(host: Host, capability: Capability, operation: Operation, body: Any,
                   model: Model) -> Validated:
    """Every check between the model and the queue: weights (503), the plugin's ``prepare``
    (422), FileRef resolution (400), the plugin's ``check`` (in a thread) and memory admission
    (503). Used by :func:`submit` and by ``kiapi_core.testing.HandlerHarness``."""
    plugin_settings = host.plugin_settings(capability.name)
    if not host.settings.demo and model.weights:
        found = await asyncio.to_thread(status, capability, model, plugin_settings)
        if found.state != "present":
            raise WeightsMissing(missing_message(found), activate=found.activate)
    params = redact(operation.prepare(body, model, host) if operation.prepare else _default_params(body))
    resolved = await resolve_inputs(body, operation.inputs, store=host.files, settings=host.settings)
    if resolved.pixels:  # a 388 KB PNG can decode to gigabytes: admission must know
        params[INPUT_GB] = round(sum(resolved.pixels.values()) * INPUT_BYTES_PER_PIXEL / 1e9, 4)
    try:
        if operation.check is not None:
            await asyncio.to_thread(operation.check, body, params, resolved.files, host)
        # A cluster checks against its largest live host instead of this one (docs/cluster.md).
        estimate = getattr(host.jobs, "admit", host.models.admit)(capability, model, operation, params)
    except BaseException:
        await _discard(host, resolved.created)
        raise
    return Validated(model=model, params=params, inputs=resolved, estimate_gb=estimate)


async def _discard(host: Host, created: list[str]) -> None:
    """Inputs a request materialised (URL, data URL) belong to no job: do not keep them."""
    for file_id in created:
        await host.files.adelete(file_id)


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
    artifact = None
    if len(job.artifacts) == 1:
        artifact = await host.files.aget(job.artifacts[0])
    choice = negotiation.choose(request.headers.get("accept"), artifact.content_type if artifact else None)
    if choice is None:
        offered = "application/json" + (f" or {artifact.content_type}" if artifact else "")
        raise _with_job(NotAcceptable(
            f"job {job.id} succeeded, but its result is only available as {offered}; "
            f"fetch it with GET /v1/jobs/{job.id}"), job)
    if choice == "json":
        return JSONResponse(job, headers=headers)
    assert artifact is not None
    return await file_response(request, artifact, disposition="inline",
                               headers={**headers, "X-Kiapi-File-Id": artifact.file_id})


def _default_params(body: Any) -> dict[str, Any]:
    params = msgspec.to_builtins(body)
    for name in _CORE_FIELDS:
        params.pop(name, None)
    return params


def redact(value: Any) -> Any:
    """``value`` with every FileRef-shaped dict reduced to :func:`ref_summary`: job params never
    carry inline data or URL secrets, whatever a plugin's ``prepare`` returned."""
    if isinstance(value, dict):
        if value.get("type") in ("data_url", "url") and ({"data_url", "url"} & value.keys()):
            return ref_summary(value)
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _with_job(error: KiapiError, job: Job) -> KiapiError:
    error.extra["job_id"] = job.id
    error.headers["X-Kiapi-Job-Id"] = job.id
    return error


__all__ = ["BadRequest", "Validated", "decode_body", "operation_route", "respond_finished", "submit", "validate"]
