"""Optional bearer-token authentication as a pure ASGI middleware.

When ``KIAPI_AUTH_TOKEN`` is set every request needs ``Authorization: Bearer <token>``, except
``GET /health`` (for liveness probes). The comparison is constant-time.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Unauthorized
from .responses import error_response

OPEN_PATHS = frozenset({"/health"})


class BearerAuth:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, self.expected):
            response = error_response(Unauthorized(
                "missing or wrong bearer token; send 'Authorization: Bearer <KIAPI_AUTH_TOKEN>'"),
                headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
