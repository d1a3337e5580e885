"""``kiapi ps``: what a running server has loaded and is doing (like ``ollama ps``)."""

from __future__ import annotations

import json

import click

from .remote import Remote, ago, server_options, table


@click.command("ps")
@click.option("--json", "as_json", is_flag=True, help="Print the memory and job figures as JSON.")
@server_options
def ps(remote: Remote, as_json: bool) -> None:
    """Resident models, memory, and the running and queued jobs of a running server."""
    memory = remote.json("GET", "/v1/memory")
    active = remote.json("GET", "/v1/jobs", params={"status": "running,queued", "limit": 500})["data"]
    if as_json:
        click.echo(json.dumps({"memory": memory, "jobs": active}, indent=2))
        return
    rows = [[f"{r['family']}:{r['model']}", str(r.get("quantize") or "-"), f"{r['size_gb']:.2f} GiB",
             "in use" if r.get("in_use") else f"idle {r.get('idle_s', 0):.0f}s",
             "-" if r.get("expires_in_s") is None else f"{r['expires_in_s']:.0f}s"]
            for r in memory.get("resident", [])]
    if rows:
        click.echo(table(rows, ["MODEL", "QUANTIZE", "SIZE", "STATE", "UNLOADS IN"]))
    else:
        click.echo("no model loaded")
    click.echo(f"memory: {memory['used_gb']:.2f} of {memory['budget_gb']:.2f} GiB used "
               f"({memory['resident_gb']:.2f} GiB resident, {memory['reserved_gb']:.2f} GiB reserved for jobs)")
    if active:
        click.echo("")
        click.echo(table([[j["id"], j["status"], f"{j.get('capability') or '-'}:{j.get('model') or '-'}", j["type"],
                           "-" if j.get("progress") is None else f"{j['progress'] * 100:.0f}%",
                           ago(j.get("created_at"))] for j in active],
                         ["JOB", "STATUS", "MODEL", "TYPE", "PROGRESS", "CREATED"]))
    else:
        click.echo("no job running or queued")
