"""Optional bearer-token authentication as a pure ASGI middleware.

When ``KIAPI_AUTH_TOKEN`` is set every request needs ``Authorization: Bearer <token>``, except
``GET /health`` (for liveness probes, which then shows only status and version to anonymous
callers) and the web playground's page and assets (``/``, ``/-/ui/``), which hold no data.
The scheme is case-insensitive (RFC 9110 §11.1); the token comparison is constant-time.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import StartupError, Unauthorized
from .responses import error_response

OPEN_PATHS = frozenset({"/health", "/"})
#: The web playground's static assets hold no data; the page asks for the token itself.
OPEN_PREFIXES = ("/-/ui/",)
#: Set in the ASGI scope of every request: whether it carried the right token.
AUTHENTICATED = "kiapi.authenticated"


class BearerAuth:
    def __init__(self, app: ASGIApp, token: str, loopback_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        if not token.strip():
            raise StartupError("KIAPI_AUTH_TOKEN is blank; set a real token or unset it")
        self.expected = token.strip().encode()
        #: Paths open without the token to clients on loopback (``/metrics`` for a local
        #: Prometheus, with KIAPI_METRICS_LOOPBACK_OPEN=1).
        self.loopback_paths = loopback_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[AUTHENTICATED] = ok = self._authenticated(scope)
        if (ok or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES)
                or (scope["path"] in self.loopback_paths and _loopback(scope))):
            await self.app(scope, receive, send)
            return
        response = error_response(Unauthorized(
            "missing or wrong bearer token; send 'Authorization: Bearer <KIAPI_AUTH_TOKEN>'"),
            headers={"WWW-Authenticate": "Bearer", "Connection": "close"})
        await response(scope, receive, send)

    def _authenticated(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                token = token.strip()
                return scheme.lower() == b"bearer" and bool(token) and hmac.compare_digest(token, self.expected)
        return False


def _loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0]).split("%", 1)[0]).is_loopback
    except ValueError:
        return False
