"""``kiapi check``: load each model and run its smallest real request.

The check goes through the real request path (the app, its lifespan, the job manager and the
memory manager) over an in-process HTTP client, so what passes here passes in the server. It
holds the data directory's lock while it runs: a check beside a live server would load a
second copy of the models and double-book the memory budget the server believes it owns.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import time
from typing import Any, Literal

import click
import msgspec

from ..weights.presence import checks_disk, status
from ..weights.runtime import mlx_note
from ..weights.selection import SelectionError, select
from . import make_host

Outcome = Literal["ok", "failed", "missing", "skipped"]


class CheckResult(msgspec.Struct, kw_only=True):
    """One model's check: outcome, timings and measured memory (GiB; ``None`` when unmeasured)."""

    model: str
    outcome: Outcome
    operation: str | None = None
    load_s: float | None = None
    run_s: float | None = None
    weights_gb: float | None = None
    request_peak_gb: float | None = None
    peak_gb: float | None = None
    memory_backend: str | None = None
    job_id: str | None = None
    detail: str = ""


@click.command()
@click.argument("selectors", nargs=-1, metavar="[FAMILY[:MODEL]]...")
@click.option("--demo", is_flag=True, help="Check the tiny random-weight demo models (every model; no downloads).")
@click.option("--data-dir", default=None, help="Data directory to run in (KIAPI_DATA_DIR); must not be a running server's.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def check(ctx: click.Context, selectors: tuple[str, ...], demo: bool, data_dir: str | None, as_json: bool) -> None:
    """Load each model whose weights are present and run its smallest real request.

    FAMILY selects every model of a capability, FAMILY:MODEL one; none selects every present
    model. Reports load time, run time and measured peak memory per model, and exits non-zero
    when any check fails (or a named model is missing). Refuses while a server holds the same
    data directory: stop it, or use another KIAPI_DATA_DIR.
    """
    from ..lockfile import DataDirLock, LockHeld
    from ..serve import quiet_model_libraries

    quiet_model_libraries()
    # The checks run in this process, never through a cluster's shared queue (KIAPI_CLUSTER_URL).
    host = make_host(ctx, demo=demo, data_dir=data_dir, cluster_url="", role="all")
    caps = list(host.registry)
    if not caps:
        raise click.ClickException("no capability plugins are installed; try `pip install kiapi-ernie`")
    try:
        chosen = select(caps, selectors or [c.name for c in caps])
    except SelectionError as exc:
        raise click.UsageError(str(exc)) from None
    lock = DataDirLock(host.settings.data_path)
    try:
        lock.acquire(owner="kiapi check")
    except LockHeld as exc:
        raise click.ClickException(
            f"{exc}. `kiapi check` loads models, and beside a running server it would double-book "
            "memory: stop the server first, or run the check with a different data directory "
            "(--data-dir or KIAPI_DATA_DIR).") from None
    try:
        results, runnable = _triage(host, chosen, demo=demo, named=bool(selectors))
        if not runnable:
            _report(results, as_json)
            hint = ("activate weights first (`kiapi status` lists the commands), or try `kiapi check --demo`"
                    if any(r.detail.startswith("weights") for r in results) else "see above")
            raise click.ClickException(f"nothing to check: {hint}")
        note = mlx_note()
        if note and not as_json:
            click.secho(f"note: {note}", fg="yellow", err=True)
        results.extend(asyncio.run(_run(host, runnable, demo, progress=not as_json)))
    finally:
        lock.release()
    order = {f"{c.name}:{m.name}": i for i, (c, m) in enumerate(chosen)}
    results.sort(key=lambda r: order.get(r.model, 0))
    _report(results, as_json)
    if any(r.outcome in ("failed", "missing") for r in results):
        sys.exit(1)


def _triage(host: Any, chosen: list[tuple[Any, Any]], *, demo: bool,
            named: bool) -> tuple[list[CheckResult], list[tuple[Any, Any]]]:
    """Split the selection into models to run and results for those that cannot run."""
    results: list[CheckResult] = []
    runnable: list[tuple[Any, Any]] = []
    for capability, model in chosen:
        name = f"{capability.name}:{model.name}"
        if checks_disk(model, demo):
            found = status(capability, model, host.plugin_settings(capability.name))
            if found.state != "present":
                results.append(CheckResult(model=name, outcome="missing" if named else "skipped",
                                           detail=f"weights {found.state}: run `{found.activate}`"))
                continue
        if capability.smoke_test is None:
            results.append(CheckResult(model=name, outcome="skipped", detail="the plugin declares no smoke test"))
            continue
        runnable.append((capability, model))
    return results, runnable


def smoke_request(capability: Any, model: Any, demo: bool) -> tuple[str, dict[str, Any]]:
    """The capability's smoke test for ``model``; passes ``demo=`` when the function takes it."""
    function = capability.smoke_test
    try:
        parameters: list[inspect.Parameter] = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    if any(p.name == "demo" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        operation, body = function(model, demo=demo)
    else:
        operation, body = function(model)
    return operation, dict(body)


async def _run(host: Any, items: list[tuple[Any, Any]], demo: bool, *, progress: bool) -> list[CheckResult]:
    from ..testing.helpers import client

    results = []
    async with client(host, timeout=3600.0) as http:
        for capability, model in items:
            if progress:
                click.echo(f"checking {capability.name}:{model.name} ...", err=True)
            try:
                results.append(await _check_one(http, capability, model, demo))
            except Exception as exc:  # one model's crash is that model's failure
                results.append(CheckResult(model=f"{capability.name}:{model.name}", outcome="failed",
                                           detail=f"{type(exc).__name__}: {exc}"))
    return results


def _error(response: Any) -> str:
    try:
        body = response.json()
        return f"HTTP {response.status_code}: {body.get('detail') or body}"
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"


async def _check_one(http: Any, capability: Any, model: Any, demo: bool) -> CheckResult:
    name = f"{capability.name}:{model.name}"
    operation, body = smoke_request(capability, model, demo)
    body.update(model=model.name, mode="async")
    result = CheckResult(model=name, outcome="failed", operation=operation)
    started = time.monotonic()
    loaded = await http.post(f"/v1/memory/models/{capability.name}/{model.name}/load")
    if loaded.status_code == 200:
        result.load_s = round(time.monotonic() - started, 2)
        result.weights_gb = (loaded.json().get("resident") or {}).get("measured_gb")
    elif loaded.status_code not in (404, 405, 501) and "admin work" not in loaded.text:
        result.detail = f"loading failed: {_error(loaded)}"
        return result
    started = time.monotonic()
    response = await http.post(f"{capability.prefix}/{operation}", json=body)
    if response.status_code == 202:
        job = await http.wait_job(response.json()["job_id"], timeout=3600.0)
    elif response.status_code == 200 and response.headers.get("X-Kiapi-Job-Id"):
        job = (await http.get(f"/v1/jobs/{response.headers['X-Kiapi-Job-Id']}")).json()
    else:
        result.detail = f"request failed: {_error(response)}"
        return result
    result.run_s = round(time.monotonic() - started, 2)
    if job.get("started_at") and job.get("finished_at"):
        result.run_s = round(job["finished_at"] - job["started_at"], 2)
    result.job_id = job.get("id")
    metrics = job.get("metrics") or {}
    result.request_peak_gb = metrics.get("peak_gb")
    result.memory_backend = metrics.get("memory_backend")
    if result.weights_gb is not None and result.request_peak_gb is not None:
        result.peak_gb = round(result.weights_gb + result.request_peak_gb, 3)
    else:
        result.peak_gb = metrics.get("peak_total_gb")
    await http.post(f"/v1/memory/models/{capability.name}/{model.name}/unload")
    if job.get("status") != "succeeded":
        result.detail = f"job {job.get('status')}: {job.get('error') or ''}".strip()
        return result
    result.outcome = "ok"
    return result


def _gb(value: float | None) -> str:
    """Memory figures in GiB (2**30 bytes), as the memory manager counts them."""
    return "n/a" if value is None else f"{value:.3f} GiB"


def _report(results: list[CheckResult], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(results), indent=2))
        return
    width = max((len(r.model) for r in results), default=0)
    colours = {"ok": "green", "failed": "red", "missing": "red", "skipped": "yellow"}
    for r in results:
        head = f"{r.model.ljust(width)}  {click.style(r.outcome.ljust(7), fg=colours[r.outcome])}"
        if r.outcome == "ok" or r.run_s is not None:
            load = "n/a (inside the run)" if r.load_s is None else f"{r.load_s:.2f} s"
            memory = _gb(r.peak_gb)
            if r.weights_gb is not None and r.request_peak_gb is not None:
                memory += f" (weights {_gb(r.weights_gb)} + request {_gb(r.request_peak_gb)})"
            if r.memory_backend:
                memory += f", measured by {r.memory_backend}"
            click.echo(f"{head}  load {load}  run {'n/a' if r.run_s is None else f'{r.run_s:.2f} s'}"
                       f"  peak memory {memory}")
        else:
            click.echo(head)
        if r.detail:
            click.echo(f"{' ' * width}  {r.detail}")
