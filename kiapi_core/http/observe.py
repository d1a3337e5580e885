"""Every HTTP request counted and logged: Prometheus figures and the access log.

A pure ASGI middleware, outermost, so it sees every answer (401s and errors included). The
route label is the matched route's *template* (``/v1/jobs/{job_id}``), never the raw path, so
a scan of random URLs cannot grow the metrics without bound. The access log line carries the
job id of any request that made or named a job (the ``X-Kiapi-Job-Id`` answer header).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("kiapi.access")

Observer = Callable[[str, str, int, float], None]


class ObserveRequests:
    def __init__(self, app: ASGIApp, observe: Observer) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        job_id: str | None = None
        sent = 0

        async def observing_send(message: Message) -> None:
            nonlocal status, job_id, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"x-kiapi-job-id":
                        job_id = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            took_s = time.perf_counter() - started
            route = _template(scope, status)
            if job_id is None:  # GET /v1/jobs/{job_id}...: the job it names
                named = (scope.get("path_params") or {}).get("job_id")
                job_id = named if isinstance(named, str) else None
            self.observe(scope["method"], route, status, took_s)
            _access_line(scope, status, sent, took_s, route, job_id)


def _template(scope: Scope, status: int) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    return "unmatched" if status == 404 else "other"


def _access_line(scope: Scope, status: int, sent: int, took_s: float, route: str, job_id: str | None) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client") or ("-", 0)
    query = scope.get("query_string", b"").decode("latin-1")
    target = scope["path"] + (f"?{query}" if query else "")
    line = f'{client[0]} "{scope["method"]} {target}" {status} {sent}B {took_s * 1000:.1f}ms'
    if job_id:
        line += f" job={job_id}"
    log.info(line, extra={"event": "http", "client": client[0], "method": scope["method"], "path": scope["path"],
                          "route": route, "status": status, "bytes": sent,
                          "duration_ms": round(took_s * 1000, 2), "job_id": job_id})
