"""``kiapi jobs``: list, watch and cancel a running server's jobs."""

from __future__ import annotations

import json

import click

from .remote import Remote, ago, default_url, progress_line, server_options, table

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


@click.group("jobs", invoke_without_command=True)
@click.pass_context
def jobs(ctx: click.Context) -> None:
    """List (the default), watch and cancel jobs of a running server."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_jobs, url=default_url())  # click does not read envvars for ctx.invoke


@jobs.command("list")
@click.option("--status", type=click.Choice(STATUSES), multiple=True, help="Only these statuses (repeatable).")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@server_options
def list_jobs(remote: Remote, status: tuple[str, ...] = (), limit: int = 20, as_json: bool = False) -> None:
    """The newest jobs first."""
    params: dict[str, str | int] = {"limit": limit}
    if status:
        params["status"] = ",".join(status)
    data = remote.json("GET", "/v1/jobs", params=params)["data"]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if not data:
        click.echo("no jobs")
        return
    click.echo(table([[j["id"], j["status"], f"{j.get('capability') or '-'}:{j.get('model') or '-'}", j["type"],
                       _took(j), ago(j.get("created_at")), (j.get("error") or "")[:60]] for j in data],
                     ["JOB", "STATUS", "MODEL", "TYPE", "TOOK", "CREATED", "ERROR"]))


@jobs.command("watch")
@click.argument("job_id")
@server_options
def watch(remote: Remote, job_id: str) -> None:
    """Follow a job with a progress bar until it ends; exits 1 unless it succeeded."""
    job = remote.wait_job(job_id, on_change=lambda j: click.echo(progress_line(j), nl=False, err=True))
    click.echo("", err=True)
    click.echo(json.dumps(job, indent=2))
    if job["status"] != "succeeded":
        raise SystemExit(1)


@jobs.command("cancel")
@click.argument("job_ids", nargs=-1, required=True)
@server_options
def cancel(remote: Remote, job_ids: tuple[str, ...]) -> None:
    """Cancel jobs: a queued one at once, a running one at its next step."""
    for job_id in job_ids:
        job = remote.json("POST", f"/v1/jobs/{job_id}/cancel")
        state = "cancel requested (running)" if job["status"] == "running" else job["status"]
        click.echo(f"{job_id}: {state}")


def _took(job: dict) -> str:
    if job.get("started_at") and job.get("finished_at"):
        return f"{job['finished_at'] - job['started_at']:.1f}s"
    return "-"
