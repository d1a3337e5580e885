"""JSON responses encoded with msgspec, and the one error shape used everywhere."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from ..errors import KiapiError

_encoder = msgspec.json.Encoder()


class JSONResponse(Response):
    """A JSON response for any msgspec-encodable content (Structs, dicts, lists)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


def error_response(exc: KiapiError, *, job_id: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"detail", "code", ...}`` with the job id (body and ``X-Kiapi-Job-Id``) when one exists."""
    body = exc.body()
    all_headers = dict(exc.headers)
    if job_id is not None:
        body["job_id"] = job_id
        all_headers["X-Kiapi-Job-Id"] = job_id
    all_headers.update(headers or {})
    return JSONResponse(body, status_code=exc.status, headers=all_headers)
