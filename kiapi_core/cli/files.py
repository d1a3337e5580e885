"""``kiapi files`` (usage by kind, list, delete) and ``kiapi prune`` for a running server."""

from __future__ import annotations

import json
import re
from datetime import datetime

import click

from ..units import human_bytes
from .remote import Remote, ago, default_url, server_options, table

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.I)


@click.group("files", invoke_without_command=True)
@click.pass_context
def files(ctx: click.Context) -> None:
    """Storage of a running server: usage by kind (the default), list, delete."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(usage, url=default_url())  # click does not read envvars for ctx.invoke


@files.command("usage")
@click.option("--json", "as_json", is_flag=True)
@click.option("--data-dir", default=None, help="Read a stopped server's data directory instead of asking a server.")
@server_options
def usage(remote: Remote, as_json: bool = False, data_dir: str | None = None) -> None:
    """Files and bytes by kind (output, upload, input), and the retention in force."""
    if data_dir:
        from ..files.offline import usage_of_data_dir

        figures = _offline(lambda settings: usage_of_data_dir(settings), data_dir)
    else:
        figures = remote.json("GET", "/v1/files/usage")
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    rows = [[kind, str(k["files"]), human_bytes(k["bytes"])] for kind, k in figures["kinds"].items()]
    rows.append(["total", str(figures["files"]), human_bytes(figures["bytes"])])
    click.echo(table(rows, ["KIND", "FILES", "SIZE"]))
    retention = figures.get("retention", {})
    click.echo(f"retention: outputs and jobs {_duration(retention.get('output_ttl_s'))}, "
               f"uploads and inputs {_duration(retention.get('upload_ttl_s'))}")
    if retention.get("quota_bytes"):
        click.echo(f"quota: {human_bytes(figures['bytes'])} of {human_bytes(retention['quota_bytes'])} used "
                   f"({figures['bytes'] / retention['quota_bytes'] * 100:.0f}%)")


@files.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@server_options
def list_files(remote: Remote, limit: int, as_json: bool) -> None:
    """The newest files first."""
    data = remote.json("GET", "/v1/files", params={"limit": limit})["data"]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if not data:
        click.echo("no files")
        return
    click.echo(table([[r["file_id"], r["filename"][:40], human_bytes(r["size"]), r["meta"].get("job_id") or "-",
                       ago(r["created_at"]), _date(r.get("expires_at"))] for r in data],
                     ["FILE", "NAME", "SIZE", "JOB", "CREATED", "EXPIRES"]))


@files.command("rm")
@click.argument("file_ids", nargs=-1, required=True)
@server_options
def remove(remote: Remote, file_ids: tuple[str, ...]) -> None:
    """Delete files (one request for all of them)."""
    result = remote.json("DELETE", "/v1/files", json={"file_ids": list(file_ids)})
    for file_id in result["deleted"]:
        click.echo(f"deleted {file_id}")
    for file_id in result["not_found"]:
        click.echo(f"not found: {file_id}", err=True)


@click.command("prune")
@click.option("--older-than", "older_than", metavar="AGE", help="Files created before this: 90m, 12h, 7d, 2w.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(["succeeded", "failed", "canceled"]),
              help="Jobs that ended so, and their outputs (repeatable).")
@click.option("--max-size", metavar="SIZE", help="Delete the oldest files until all take at most this: 50GB, 500MB.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["output", "upload", "input"]),
              help="Only files of this kind (repeatable; default: all).")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted, delete nothing.")
@click.option("--data-dir", default=None,
              help="Prune a stopped server's data directory directly instead of asking a server.")
@click.option("--json", "as_json", is_flag=True)
@server_options
def prune(remote: Remote, older_than: str | None, statuses: tuple[str, ...], max_size: str | None,
          kinds: tuple[str, ...], dry_run: bool, data_dir: str | None, as_json: bool) -> None:
    """Delete files (and job records) by age, job status or a total size target.

    \b
    kiapi prune --older-than 3d --dry-run
    kiapi prune --status failed --status canceled
    kiapi prune --max-size 50GB --kind output
    """
    if not (older_than or statuses or max_size):
        raise click.UsageError("say what to prune: --older-than, --status and/or --max-size")
    body: dict[str, object] = {"dry_run": dry_run}
    if older_than:
        body["older_than_s"] = parse_duration(older_than)
    if statuses:
        body["job_status"] = list(statuses)
    if max_size:
        body["max_total_bytes"] = parse_size(max_size)
    if kinds:
        body["kinds"] = list(kinds)
    if data_dir:
        import msgspec

        from ..files.offline import prune_data_dir
        from ..files.retention import PruneRequest

        request = msgspec.convert(body, PruneRequest)
        result = _offline(lambda settings: msgspec.to_builtins(prune_data_dir(settings, request)), data_dir)
    else:
        result = remote.json("POST", "/v1/files/prune", json=body)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    for file_id in result["deleted"]:
        click.echo(f"{verb} {file_id}")
    click.echo(f"{verb} {len(result['deleted'])} file(s), {human_bytes(result['deleted_bytes'])}, and "
               f"{len(result['jobs_deleted'])} job record(s); {human_bytes(result['remaining_bytes'])} remain"
               + (" (dry run)" if dry_run else ""))


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise click.BadParameter(f"{text!r}: use a number and a unit, e.g. 90m, 12h, 7d, 2w")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: use a number and a unit, e.g. 500MB, 50GB")
    return int(float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[match.group(2).lower()])


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "kept until deleted"
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _date(timestamp: float | None) -> str:
    return "never" if not timestamp else datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def _offline(action, data_dir: str):
    """Run ``action(settings)`` on a data directory no server holds (the settings' retention)."""
    from ..lockfile import LockHeld
    from . import load

    settings = load(click.get_current_context(), data_dir=data_dir).settings
    try:
        return action(settings)
    except LockHeld as exc:
        raise click.ClickException(f"{exc}; a running server owns it: run without --data-dir "
                                   "to go through it (--url / KIAPI_URL)") from None
