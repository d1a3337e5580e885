"""``kiapi cluster``: the hosts sharing the cluster database (what ``GET /v1/cluster/hosts`` shows)."""

from __future__ import annotations

import json
import re

import click
import msgspec

from . import load


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``."""
    return re.sub(r"^([a-z]+://[^:/@]+):[^@]*@", r"\1:***@", url)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def cluster(ctx: click.Context, as_json: bool) -> None:
    """List the cluster's hosts: id, URL, role, capabilities, resident models, free memory,
    running job, heartbeat age, draining. Reads the database of KIAPI_CLUSTER_URL."""
    settings = load(ctx).settings
    if not settings.cluster_url:
        raise click.ClickException("cluster mode is off: set KIAPI_CLUSTER_URL=postgresql://... "
                                   "(see docs/cluster.md)")
    try:
        from ..cluster.pg import PgJobBackend, connect_pool
    except ImportError:
        raise click.ClickException("the cluster extra is not installed: pip install 'kiapi-core[cluster]'") from None
    try:
        pool = connect_pool(settings.cluster_url, size=1)
    except Exception as exc:  # psycopg's errors, shown as they are
        raise click.ClickException(f"cannot reach {redact_url(settings.cluster_url)}: {exc}") from None
    try:
        hosts = PgJobBackend(pool).hosts(live_s=settings.cluster_lease_s)
        queued = PgJobBackend(pool).queued()
    finally:
        pool.close()
    if as_json:
        click.echo(json.dumps({"hosts": msgspec.to_builtins(hosts), "queued": queued}, indent=2))
        return
    click.echo(f"{redact_url(settings.cluster_url)}: {len(hosts)} host(s), {queued} job(s) queued")
    for h in hosts:
        state = "draining" if h.draining else ("live" if h.live else "silent")
        click.echo(f"{h.id}  {h.url or '-'}  role {h.role}  {state}, heartbeat {h.heartbeat_age_s:.1f} s ago")
        click.echo(f"  capabilities: {', '.join(h.capabilities) or '-'}")
        click.echo(f"  resident: {', '.join(h.resident) or '-'}   free {h.free_gb:.1f} of {h.budget_gb:.1f} GiB")
        click.echo(f"  running: {h.running_job or '-'}")
