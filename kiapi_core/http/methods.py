"""405 answers that say what would work: every method the path accepts, across routes.

Starlette answers 405 from the first route whose path matches, so ``/v1/files`` (GET and POST
declared as two routes) listed only one of them in ``Allow``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from ..errors import KiapiError

#: Response headers a browser page on a KIAPI_CORS_ORIGINS origin may read.
EXPOSED_HEADERS = ["X-Kiapi-Job-Id", "X-Kiapi-Warnings", "X-Kiapi-File-Id", "Location", "Retry-After",
                   "Idempotent-Replayed", "Content-Disposition", "Content-Range", "ETag"]


class MethodNotAllowed(KiapiError):
    status = 405
    code = "method_not_allowed"


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app accepts for the request's path."""
    path = request.url.path
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.path_regex.match(path):
            methods |= set(route.methods or ())
    return sorted(methods)


def method_not_allowed(request: Request) -> MethodNotAllowed:
    methods = allowed_methods(request)
    hint = ""
    if "POST" in methods and "GET" not in methods:
        hint = " (send a JSON body with Content-Type: application/json)"
    detail = (f"{request.method} is not allowed on {request.url.path}; use "
              f"{' or '.join(m for m in methods if m != 'HEAD') or 'another path'}{hint}; see GET /openapi.json")
    return MethodNotAllowed(detail, headers={"Allow": ", ".join(methods)}, allowed=methods)
