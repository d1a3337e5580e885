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
from .retention import PruneRequest, retention_of, run_prune, usage

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
