"""``kiapi status``, ``activate`` and ``deactivate``: model weights on disk.

These commands build the host with demo mode off whatever the settings say, because they are
about the real weights (demo declarations carry none). ``status`` and the planning part of
``activate`` work without network; huggingface_hub is imported only to talk to the Hub.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec

from ..units import human_bytes
from ..weights.layout import hf_cache_dir
from ..weights.presence import WeightStatus, status
from ..weights.runtime import mlx_note
from ..weights.selection import SelectionError, select, valid_selectors
from . import make_host


def _home(path: str | None) -> str:
    """``path`` with the home directory shown as ``~`` (tables stay readable)."""
    if not path:
        return "-"
    home = str(Path.home())
    return "~" + path[len(home):] if path.startswith(home + "/") else path


def _where(found: WeightStatus) -> str:
    if not found.parts:
        return "-"
    part = next((p for p in found.parts if p.state != "missing"), found.parts[0])
    if part.source == "local":
        return f"{_home(part.root)} ({part.setting})"
    return f"HF cache: {_home(part.root)}"


def _host(ctx: click.Context) -> Any:
    return make_host(ctx, demo=False)


def _selected(host: Any, selectors: tuple[str, ...], use_all: bool, command: str) -> list[Any]:
    caps = list(host.registry)
    if not caps:
        raise click.ClickException("no capability plugins are installed; try `pip install kiapi-ernie`")
    if not selectors and not use_all:
        raise click.UsageError(f"name what to {command} (or pass --all); valid selectors: "
                               f"{', '.join(valid_selectors(caps))}")
    try:
        return select(caps, selectors or [c.name for c in caps], with_weights=True)
    except SelectionError as exc:
        raise click.UsageError(str(exc)) from None


def _interactive() -> bool:
    """Whether a person can answer a confirmation prompt."""
    return sys.stdin.isatty()


def _interrupted() -> NoReturn:
    click.secho("\ninterrupted: files already downloaded are kept; run the same command again to resume.",
                fg="yellow", err=True)
    sys.exit(130)


# -- status ----------------------------------------------------------------------------------
@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every model, parts, sizes in bytes).")
@click.pass_context
def status_command(ctx: click.Context, as_json: bool) -> None:
    """Show every model of every installed plugin: present, partial or missing.

    Lists family, variant, aliases, size on disk and expected size, where the files are (the
    Hugging Face cache or a configured local directory) and the `kiapi activate` command for
    anything not present. Offline and fast: reads the disk only.
    """
    host = _host(ctx)
    rows = [(c, m, status(c, m, host.plugin_settings(c.name))) for c in host.registry for m in c.models]
    note = mlx_note()
    demo_on = bool(_loaded_settings(ctx).demo)
    if as_json:
        click.echo(json.dumps({
            "hf_cache": str(hf_cache_dir()), "mlx": note, "demo_setting": demo_on,
            "models": [dict(msgspec.to_builtins(found), weights_declared=bool(m.weights)) for _, m, found in rows],
        }, indent=2))
        return
    if not rows:
        click.echo("no capability plugins are installed; try `pip install kiapi-ernie kiapi-seedvr2`")
    table = [("MODEL", "ALIASES", "STATE", "ON DISK", "EXPECTED", "WHERE")]
    for _, model, found in rows:
        table.append((
            f"{found.family}:{found.model}{' *' if found.default else ''}",
            ", ".join(found.aliases) or "-",
            found.state if model.weights else "no files",
            human_bytes(found.size_bytes) if model.weights else "-",
            human_bytes(found.expected_bytes) if model.weights else "-",
            _where(found),
        ))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    colours = {"present": "green", "partial": "yellow", "missing": "red"}
    for i, row in enumerate(table):
        cells = [cell.ljust(widths[j]) for j, cell in enumerate(row[:-1])]
        if i and row[2] in colours:
            cells[2] = click.style(cells[2], fg=colours[row[2]])
        click.echo("  ".join([*cells, row[-1]]), color=None)
    if rows:
        click.echo("(* = default model)")
    todo = [(m, f) for _, m, f in rows if m.weights and f.state != "present"]
    if todo:
        click.echo("\nTo download what is not present:")
        pad = max(len(found.activate) for _, found in todo)
        for _model, found in todo:
            remaining = max(0, found.expected_bytes - found.size_bytes)
            click.echo(f"  {found.activate.ljust(pad)}  (~{human_bytes(remaining)})")
            for line in found.notes:
                click.echo(f"    note: {line}")
        if len(todo) > 1:
            click.echo("  kiapi activate --all")
    click.echo(f"\nHugging Face cache: {_home(str(hf_cache_dir()))} (HF_HUB_CACHE / HF_HOME)")
    if demo_on:
        click.echo("Demo mode is on in the settings: the server serves tiny random models and ignores these weights.")
    if note:
        click.secho(f"Note: {note}", fg="yellow")


def _loaded_settings(ctx: click.Context) -> Any:
    from . import load

    return load(ctx).settings


# -- activate --------------------------------------------------------------------------------
@click.command()
@click.argument("selectors", nargs=-1, metavar="[FAMILY[:MODEL]]...")
@click.option("--all", "use_all", is_flag=True, help="Every model of every installed plugin.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before downloading (scripts never get asked).")
@click.option("--dry-run", is_flag=True, help="Show the plan (repos, revisions, patterns, sizes, disk space) and stop.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
@click.pass_context
def activate(ctx: click.Context, selectors: tuple[str, ...], use_all: bool, yes: bool, dry_run: bool,
             as_json: bool) -> None:
    """Download the weights of models from the Hugging Face Hub.

    FAMILY selects every model of a capability (`ernie`), FAMILY:MODEL one (`ernie:turbo`,
    aliases accepted). Plans first: which repositories, pinned revisions and file patterns, how
    much is still to fetch given what is on disk, and whether the disk has room. Downloads only
    the files each variant needs, with progress bars, into the Hugging Face cache (or the
    plugin's local directory when one is configured). Models already present are reported, not
    fetched. Interrupted downloads resume when the same command runs again. Gated repositories
    need `hf auth login` (or HF_TOKEN) after accepting their terms on huggingface.co.
    """
    from ..weights.download import ActivationError, check_disk, download, explain, make_plan, refine

    host = _host(ctx)
    items = _selected(host, selectors, use_all, "activate")
    if not items:
        click.echo("nothing to download: the selected models need no weight files")
        return
    plan = make_plan(items, host.plugin_settings)
    for found in plan.present:
        click.echo(f"{found.family}:{found.model}: already present ({human_bytes(found.size_bytes)} in "
                   f"{_home(found.location)})")
    if not plan.downloads:
        if not as_json:
            click.echo("nothing to download")
        else:
            click.echo(json.dumps(msgspec.to_builtins(plan), indent=2))
        return
    for item in plan.downloads:
        try:
            refine(item)
        except KeyboardInterrupt:
            _interrupted()
        except Exception as exc:  # worded by explain(), else re-raised
            message = explain(exc, item)
            if message is None:
                raise
            if not dry_run:
                raise click.ClickException(message) from None
            plan.notes.append(f"sizes are estimates; the Hub could not be asked about {item.repo}: {message}")
            break  # one unreachable Hub is enough to know
    disk_problem = None
    try:
        check_disk(plan)
    except ActivationError as exc:
        disk_problem = str(exc)
    if as_json:
        click.echo(json.dumps(dict(msgspec.to_builtins(plan), download_bytes=plan.download_bytes,
                                   exact=plan.exact, disk_problem=disk_problem), indent=2))
    else:
        _print_plan(plan)
    if dry_run:
        if disk_problem and not as_json:
            click.secho(disk_problem, fg="red")
        return
    if disk_problem:
        raise click.ClickException(disk_problem)
    if not yes and _interactive():
        click.confirm(f"Download {human_bytes(plan.download_bytes)}?", default=True, abort=True)
    for item in plan.downloads:
        click.echo(f"downloading {item.repo} for {', '.join(item.models)} ...")
        try:
            download(item)
        except KeyboardInterrupt:
            _interrupted()
        except Exception as exc:
            message = explain(exc, item)
            if message is None:
                raise
            raise click.ClickException(message) from None
    failed = False
    for found in plan.todo:
        capability = host.registry.get(found.family)
        after = status(capability, host.registry.resolve_model(found.family, found.model),
                       host.plugin_settings(found.family))
        if after.state == "present":
            click.secho(f"{found.family}:{found.model}: ready ({human_bytes(after.size_bytes)})", fg="green")
        else:
            failed = True
            click.secho(f"{found.family}:{found.model}: still {after.state}: {'; '.join(after.missing)}", fg="red")
    if failed:
        raise click.ClickException("some models are not complete after the download (see above); "
                                   "the repository may have changed layout: report it to the plugin's authors")


def _print_plan(plan: Any) -> None:
    for found in plan.todo:
        click.echo(f"{found.family}:{found.model}: {found.state} "
                   f"({human_bytes(found.size_bytes)} of ~{human_bytes(found.expected_bytes)} on disk)")
    click.echo("Plan:")
    for item in plan.downloads:
        place = (f"local directory {_home(item.path)}" if item.destination == "local"
                 else f"Hugging Face cache {_home(item.path)}")
        size = (f"{human_bytes(item.exact_bytes)} in {item.files} files" if item.exact_bytes is not None
                else f"~{human_bytes(item.estimate_bytes)} (estimated)")
        click.echo(f"  {item.repo} @ {(item.revision or 'main')[:12]} -> {place}")
        click.echo(f"    for {', '.join(item.models)}; files: {', '.join(item.patterns) or 'all'}")
        click.echo(f"    to download: {size}")
    click.echo(f"Total to download: {'' if plan.exact else '~'}{human_bytes(plan.download_bytes)}")
    for note in plan.notes:
        click.secho(f"note: {note}", fg="yellow")


# -- deactivate ------------------------------------------------------------------------------
@click.command()
@click.argument("selectors", nargs=-1, metavar="FAMILY[:MODEL]...")
@click.option("--yes", "-y", is_flag=True, help="Delete without asking (required when not run from a terminal).")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted and freed, delete nothing.")
@click.pass_context
def deactivate(ctx: click.Context, selectors: tuple[str, ...], yes: bool, dry_run: bool) -> None:
    """Delete the weights of models from the Hugging Face cache to free disk space.

    FAMILY selects every model of a capability, FAMILY:MODEL one (aliases accepted). Removes
    exactly the files of the named variants at their pinned revisions, keeping files another
    variant still needs (SeedVR2's shared VAE when only 3b goes). Asks for confirmation first.
    Configured local directories are never deleted.
    """
    from ..weights.remove import plan_removal, remove

    host = _host(ctx)
    items = _selected(host, selectors, False, "deactivate")
    removals = plan_removal(list(host.registry), items, host.plugin_settings)
    for removal in removals:
        name = f"{removal.family}:{removal.model}"
        if removal.links:
            click.echo(f"{name}: {len(removal.links)} files, frees {human_bytes(removal.freed_bytes)}")
        else:
            click.echo(f"{name}: nothing to delete")
        for path, users in removal.kept.items():
            click.echo(f"  keeps {Path(path).name} (still needed by {', '.join(users)})")
        for note in removal.notes:
            click.echo(f"  {note}")
    if not any(r.links for r in removals):
        return
    total = sum(r.freed_bytes for r in removals)
    if dry_run:
        click.echo(f"would free {human_bytes(total)} (dry run: nothing deleted)")
        return
    if not yes:
        if not _interactive():
            raise click.ClickException("refusing to delete without confirmation: no terminal to ask on; "
                                       "pass --yes")
        click.confirm(f"Delete these files and free {human_bytes(total)}?", default=False, abort=True)
    freed = remove(removals)
    click.echo(f"freed {human_bytes(freed)}")
