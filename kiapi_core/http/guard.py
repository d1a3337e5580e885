"""Host and Origin checks: a web page must not drive the server (CSRF, DNS rebinding).

A server without a token on loopback is reachable by every web page the user opens: the page
cannot read answers (the same-origin policy), but it can *send* requests, and through DNS
rebinding (``attacker.example`` re-resolving to 127.0.0.1) it can even read them. Two checks
close both doors, in a pure ASGI middleware in front of everything (auth included):

* **Host**: the ``Host`` header must name this server: ``localhost`` (and ``*.localhost``), a
  literal IP address (a rebinding page always uses a DNS name), the configured ``KIAPI_HOST``,
  or a name listed in ``KIAPI_ALLOWED_HOSTS`` (``*`` allows any). Otherwise 400
  ``host_not_allowed``. ``GET /health`` answers any name (liveness probes).
* **Origin**: a state-changing request (POST, PUT, PATCH, DELETE) carrying an ``Origin`` header
  must come from this server's own origin (the docs pages and the playground) or one listed in
  ``KIAPI_CORS_ORIGINS``; otherwise 403 ``origin_not_allowed`` (also when a browser marks it
  ``Sec-Fetch-Site: cross-site`` without an ``Origin``). Requests without ``Origin`` (curl,
  httpx, SDKs) are not browsers' cross-site requests and pass.

JSON endpoints also require ``Content-Type: application/json`` (415), which a page can only send
after a CORS preflight, and the preflight only succeeds for ``KIAPI_CORS_ORIGINS``.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import KiapiError
from .responses import error_response

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})


class HostNotAllowed(KiapiError):
    status = 400
    code = "host_not_allowed"


class OriginNotAllowed(KiapiError):
    status = 403
    code = "origin_not_allowed"


def host_name(value: str) -> str:
    """The name part of a ``Host`` header or URL netloc (port and IPv6 brackets removed)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class RequestGuard:
    """The Host and Origin checks described in the module docstring."""

    def __init__(self, app: ASGIApp, *, bind_host: str, allowed_hosts: list[str],
                 cors_origins: list[str]) -> None:
        self.app = app
        names = {host_name(h) for h in allowed_hosts}
        self.any_host = "*" in names
        bound = host_name(bind_host)
        self.hosts = _LOOPBACK_NAMES | names | ({bound} if bound not in _ANY_ADDRESS else set())
        self.origins = {o.strip().rstrip("/").lower() for o in cors_origins}
        self.any_origin = "*" in self.origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        # /health answers any Host: probes address containers by service name, and what it
        # tells an anonymous caller (status, version) is no secret worth rebinding for.
        host = None if scope["path"] == "/health" and scope["method"] in ("GET", "HEAD") else headers.get(b"host")
        origin = headers.get(b"origin")
        if origin is None and headers.get(b"sec-fetch-site") == b"cross-site":
            origin = b"null"  # a browser said another site sent it, though without an Origin
        error = self.check(scope["method"], host, origin)
        if error is None:
            await self.app(scope, receive, send)
            return
        await error_response(error, headers={"Connection": "close"})(scope, receive, send)

    def check(self, method: str, host: bytes | None, origin: bytes | None) -> KiapiError | None:
        host_text = (host or b"").decode("latin-1")
        if host is not None and not self.host_allowed(host_name(host_text)):
            return HostNotAllowed(
                f"this server does not answer to the host name {host_name(host_text)[:100]!r} (Host header); "
                "use localhost or an IP address, or list the name in KIAPI_ALLOWED_HOSTS")
        if origin is None or method not in UNSAFE_METHODS:
            return None
        origin_text = origin.decode("latin-1").strip().rstrip("/").lower()
        if self.any_origin or origin_text in self.origins or self.same_origin(origin_text, host_text):
            return None
        return OriginNotAllowed(
            f"{method} requests from the web page at {origin_text[:200]!r} are refused (a page of "
            "another site must not drive this server); allow that origin with KIAPI_CORS_ORIGINS")

    def host_allowed(self, name: str) -> bool:
        return self.any_host or name in self.hosts or name.endswith(".localhost") or _is_ip(name)

    @staticmethod
    def same_origin(origin: str, host: str) -> bool:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host.strip().lower()
