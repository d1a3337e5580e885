"""The request path of a capability operation, from HTTP body to job to response.

Everything that can reject a request happens here, on the event loop and before the job is
queued: decode (400/422), model (400), weights (503), the plugin's ``prepare`` (422), FileRef
resolution (400), the plugin's ``check`` (in a thread), memory admission (503), queue space
(503). Only then does the job reach the model thread.
"""

from __future__ import annotations

import asyncio
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
    MalformedJSON,
    NotAcceptable,
    PayloadTooLarge,
    SyncTimeout,
    UnsupportedMediaType,
    WeightsMissing,
)
from ..files.resolve import ResolvedInputs, resolve_inputs
from ..files.routes import file_response
from ..jobs.models import AsyncJobResponse, Job, JobStatus
from ..jobs.store import IdempotentReplay
from ..registry import Capability, Model, Operation
from ..settings import DEMO_NOTE
from ..validation import ref_summary
from ..webhooks import take_webhook
from ..weights import missing_message, status
from . import idempotency, negotiation
from .responses import JSONResponse, error_response

if TYPE_CHECKING:
    from ..host import Host

_PATH = re.compile(r" - at `(\$[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`$")
#: Request fields the core itself interprets; they are not recorded as ignored.
_CORE_FIELDS = ("mode", "model")
#: Deepest nesting of JSON arrays/objects accepted in a request body (no operation needs more;
#: deeper bodies would only exercise recursion in the decoder and the request path).
MAX_JSON_DEPTH = 64
#: Bodies read as JSON. curl's ``-d`` sends form-urlencoded unless told otherwise, and the
#: body still is the JSON the user typed: decoding it is kinder than a 415.
_JSON_LIKE = ("application/json", "", "application/x-www-form-urlencoded", "text/plain")


def operation_route(capability: Capability, operation: Operation) -> Route:
    decoder = msgspec.json.Decoder()  # typed conversion comes after, to report unknown fields

    async def endpoint(request: Request) -> Response:
        host: Host = request.app.state.host
        raw = await _read_json(request, host.settings.max_body_mb, decoder)
        idem = idempotency.from_request(request, raw, auth_token=host.settings.auth_token)
        replayed = host.jobs.find_idempotent(*idem) if idem is not None else None
        if replayed is None:
            hook = take_webhook(raw, enabled=host.webhooks.enabled)  # core fields, not the plugin's
            body, warnings = decode_body(raw, operation.request)
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
            mode = raw.get("mode", "sync") if isinstance(raw, dict) else "sync"
        else:
            mode = getattr(body, "mode", "sync")
        mode = "async" if operation.always_async else mode
        headers = {"X-Kiapi-Job-Id": job.id}
        if replayed is not None:
            headers[idempotency.REPLAYED_HEADER] = "true"
        if job.warnings:
            # Header values are latin-1: escape whatever a client put in its field names.
            text = "; ".join(job.warnings)[:2000]
            headers["X-Kiapi-Warnings"] = text.encode("ascii", "backslashreplace").decode()
        if mode == "async":
            headers["Location"] = f"/v1/jobs/{job.id}"
            return JSONResponse(AsyncJobResponse(job_id=job.id, type=job.type, status=job.status),
                                status_code=202, headers=headers)
        job = await host.jobs.wait(job.id, host.settings.sync_timeout_s)
        return await respond_finished(host, request, job, headers)

    return Route(f"{capability.prefix}/{operation.name}", endpoint, methods=["POST"],
                 name=f"{capability.name}.{operation.name}")


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
        return host.jobs.submit(capability=capability, operation=operation, model=model, request=body,
                                params=checked.params, inputs=checked.inputs.files,
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
    try:
        if operation.check is not None:
            await asyncio.to_thread(operation.check, body, params, resolved.files, host)
        estimate = host.models.admit(capability, model, operation, params)
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
            f"(KIAPI_SYNC_TIMEOUT_S); it keeps running: poll GET /v1/jobs/{job.id}"), job)
    if job.status in (JobStatus.failed, JobStatus.canceled):
        error = host.jobs.error_of(job.id) or KiapiError(job.error or "the job did not finish",
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


async def _read_json(request: Request, max_mb: float, decoder: msgspec.json.Decoder) -> Any:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in _JSON_LIKE and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"send the request body as application/json, not {content_type}")
    limit = int(max_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {int(declared)} bytes, over the {max_mb:g} MiB limit "
                              "(KIAPI_MAX_BODY_MB); upload large inputs with POST /v1/files and pass a file_id")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {max_mb:g} MiB limit (KIAPI_MAX_BODY_MB); "
                                  "upload large inputs with POST /v1/files and pass a file_id")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data.strip():
        raise MalformedJSON("the request body is empty; send a JSON object")
    try:
        value = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise MalformedJSON(f"the request body is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                            "send JSON encoded as UTF-8") from None
    except RecursionError:
        raise MalformedJSON(_too_deep()) from None
    if not _depth_ok(value, MAX_JSON_DEPTH):
        raise MalformedJSON(_too_deep())
    return value


def _too_deep() -> str:
    return f"the request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels; flatten it"


def _depth_ok(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def decode_body(raw: Any, schema: type) -> tuple[Any, list[str]]:
    """The request Struct for a JSON body (InvalidRequest naming the field) and a warning
    listing the fields it ignored."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {type(raw).__name__}")
    try:
        body = msgspec.convert(raw, schema)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        path = match.group(1) if match else "$"
        what = message[: match.start()] if match else message
        missing = _MISSING.match(what)
        if missing:  # name the missing field itself, not the object that lacks it
            path = f"{path}.{missing.group(1)}"
            field = path[2:]
            raise InvalidRequest(f"{field} is required", field=field, path=path) from None
        field = path[2:] if path.startswith("$.") else path
        raise InvalidRequest(f"{field}: {what}" if field != "$" else what, field=field, path=path) from None
    ignored = sorted(_unknown_fields(raw, body, ""))
    warnings = [f"ignored unknown field{'s' if len(ignored) > 1 else ''}: {', '.join(ignored)}"] if ignored else []
    return body, warnings


def _unknown_fields(raw: Any, value: Any, prefix: str) -> list[str]:
    """Dotted paths of object keys that ``value``'s Struct types do not declare."""
    found: list[str] = []
    if isinstance(value, msgspec.Struct) and isinstance(raw, dict):
        info = msgspec.structs.fields(value)
        known = {f.encode_name: f.name for f in info}
        tag_field = value.__struct_config__.tag_field
        for key, item in raw.items():
            if key == tag_field:
                continue
            if key not in known:
                found.append(prefix + key)
            else:
                found += _unknown_fields(item, getattr(value, known[key]), f"{prefix}{key}.")
    elif isinstance(value, (list, tuple)) and isinstance(raw, list):
        for index, (r, v) in enumerate(zip(raw, value)):
            found += _unknown_fields(r, v, f"{prefix.rstrip('.')}[{index}].")
    return found


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
