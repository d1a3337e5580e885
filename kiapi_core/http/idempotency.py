"""``Idempotency-Key`` on POST operations: a client that lost a response can safely retry.

The key a client sends is scoped by the operation's path (and, with ``KIAPI_AUTH_TOKEN`` set, by
the ``Authorization`` header), hashed, and stored with the job it created, together with a
fingerprint of the request body: the SHA-256 of the decoded JSON re-encoded with sorted keys,
so whitespace and key order do not matter. A retry with the same key and body gets the same job
(sync: its result, waiting for it if needed; async: 202 with the same job id); the same key with
another body is 409 ``idempotency_conflict``. The key lives as long as its job is kept
(``KIAPI_JOB_TTL_S``, ``KIAPI_MAX_JOBS``, ``DELETE /v1/jobs/{id}``), across restarts.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec
from starlette.requests import Request

from ..errors import BadRequest

HEADER = "Idempotency-Key"
#: Header set on answers that replay an earlier job instead of creating one.
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_LENGTH = 255
_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")  # MAX_LENGTH printable ASCII characters


def from_request(request: Request, raw_body: Any, *, auth_token: str | None) -> tuple[str, str] | None:
    """``(scoped key, body fingerprint)`` for a request carrying ``Idempotency-Key``, else
    ``None``. Raises 400 ``invalid_idempotency_key`` for an unusable key."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    value = value.strip()
    if not _KEY.match(value):
        raise BadRequest(f"the {HEADER} header must be 1 to {MAX_LENGTH} printable ASCII characters; "
                         "a random UUID per logical request is a good choice",
                         code="invalid_idempotency_key")
    scope = [request.url.path, value]
    if auth_token:
        scope.append(request.headers.get("authorization", ""))
    key = hashlib.sha256("\0".join(scope).encode()).hexdigest()
    return key, fingerprint(raw_body)


def fingerprint(raw_body: Any) -> str:
    """A digest of the decoded body that ignores whitespace and object key order."""
    return hashlib.sha256(msgspec.json.encode(raw_body, order="sorted")).hexdigest()


__all__ = ["HEADER", "REPLAYED_HEADER", "fingerprint", "from_request"]
