"""Talking to a running server: the commands ``ps``, ``run``, ``jobs``, ``files`` and ``prune``.

They find the server from ``--url``, else ``$KIAPI_URL``, else ``http://127.0.0.1:8000``, and
send ``KIAPI_AUTH_TOKEN`` (environment or config file, as the server reads it) as the bearer
token. Errors come back as the server's one-line ``detail``; a server that is not there is
one sentence saying how to start one.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


def default_url() -> str:
    return os.environ.get("KIAPI_URL") or DEFAULT_URL


class Remote:
    """An httpx client for one server, raising ClickException with the server's message."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, trust_env=False)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise click.ClickException(
                f"no kiapi server answers at {self.url}; start one with `kiapi serve`, or point to "
                "yours with --url or KIAPI_URL") from None
        except httpx.TimeoutException:
            raise click.ClickException(f"the server at {self.url} did not answer in time") from None
        if response.status_code >= 400:
            raise click.ClickException(_problem(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def wait_job(self, job_id: str, on_change: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Long-poll the job until it ends, calling ``on_change`` with every new state."""
        job = self.json("GET", f"/v1/jobs/{job_id}")
        while True:
            if on_change is not None:
                on_change(job)
            if job["status"] in ("succeeded", "failed", "canceled"):
                return job
            job = self.json("GET", f"/v1/jobs/{job_id}", params={"wait": 30}, timeout=45.0)


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail") or response.text
    except ValueError:
        detail = response.text.strip()[:500] or response.reason_phrase
        body = {}
    extra = f" [job {body['job_id']}]" if isinstance(body, dict) and body.get("job_id") else ""
    hint = " (set KIAPI_AUTH_TOKEN to the server's token)" if response.status_code == 401 else ""
    return f"{response.status_code}: {detail}{extra}{hint}"


def server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--url`` and the token; the command receives ``remote: Remote``."""

    @click.option("--url", envvar="KIAPI_URL", default=DEFAULT_URL, show_default=True,
                  help="The server (also $KIAPI_URL).")
    @click.pass_context
    @functools.wraps(fn)
    def wrapper(ctx: click.Context, url: str, **kwargs: Any) -> Any:
        return fn(remote=Remote(url, _token(ctx)), **kwargs)

    return wrapper


def _token(ctx: click.Context) -> str | None:
    if "KIAPI_AUTH_TOKEN" in os.environ:
        return os.environ["KIAPI_AUTH_TOKEN"] or None
    from . import load

    try:
        return load(ctx).settings.auth_token  # the config file's, as the server would read it
    except click.ClickException:
        return None


def ago(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    seconds = max(0.0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    fraction = job.get("progress") or 0.0
    filled = int(round(fraction * width))
    label = job.get("progress_label") or job["status"]
    return f"\r[{'#' * filled}{'-' * (width - filled)}] {fraction * 100:5.1f}% {label[:40]:<40}"


def is_terminal() -> bool:
    return sys.stderr.isatty()
