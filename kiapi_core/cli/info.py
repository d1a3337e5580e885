"""``kiapi plugins``, ``models``, ``openapi`` and ``config``: what is installed and configured."""

from __future__ import annotations

import json

import click
import msgspec

from . import load, make_host


def _dump(value: object) -> None:
    click.echo(json.dumps(msgspec.to_builtins(value), indent=2))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "show_all", is_flag=True, help="Include the core's default plugins.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """List installed plugins with their capabilities, models and load errors.

    Always exits 0 when the settings load, whatever the plugins do: it is the command that
    diagnoses them (strict mode is off here; every problem is listed on its plugin)."""
    host = make_host(ctx, diagnose=True)
    records = [r for r in host.plugins if show_all or not r.default]
    if as_json:
        _dump(records)
        return
    selected = host.settings.load_plugins
    if not records:
        click.echo("no plugins loaded: KIAPI_LOAD_PLUGINS selects none of the installed ones"
                   if selected is not None else "no plugins installed; try `pip install kiapi-ernie`")
    from ..plugins import installed_names

    known = installed_names() | {name for r in host.plugins for name in (r.name, r.distribution)}
    for name in [*(selected or []), *host.settings.disable_plugins]:
        if name not in known:
            click.secho(f"note: no installed plugin is called {name!r} (KIAPI_LOAD_PLUGINS / "
                        "KIAPI_DISABLE_PLUGINS name entry points or distributions)", fg="yellow")
    for r in records:
        label = r.name if r.default else f"{r.distribution} {r.version}"
        click.echo(label + (f"  (entry point {r.entry_point})" if r.entry_point else ""))
        if r.error:
            click.secho(f"  error: {r.error}", fg="red")
        for text in r.deprecations:
            click.secho(f"  deprecated: {text}", fg="yellow")
        for capability, models in r.models.items():
            click.echo(f"  {capability}: models {', '.join(models)}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--budget-gb", type=click.FloatRange(min=0.5), default=None,
              help="Size every model for a machine with this memory budget in GiB (a 16 GB Mac has 10.67): "
                   "the resident quantization it would get and which typical requests fit.")
@click.pass_context
def models(ctx: click.Context, as_json: bool, budget_gb: float | None) -> None:
    """List every model of every capability, with aliases and resident quantization."""
    if budget_gb is not None:
        _models_for_budget(ctx, budget_gb, as_json)
        return
    host = make_host(ctx)
    specs = [spec for c in host.registry for spec in host.registry.model_specs(c.name)]
    if as_json:
        _dump(specs)
        return
    for spec in specs:
        aliases = f"  aliases: {', '.join(spec.aliases)}" if spec.aliases else ""
        click.echo(f"{spec.family}:{spec.name}{' (default)' if spec.default else ''}"
                   f"{_resident(host.registry.resolve_model(spec.family, spec.name))}{aliases}")


def _resident(model: object) -> str:
    """``  resident q5 (7.5 GiB, chosen by memory budget 10.67 GB)`` for a model with weights."""
    weights = getattr(model, "weights_gib", None) or {}
    bits = getattr(model, "resident_quantize", None)
    if getattr(model, "loader", None) is None or not weights:
        return ""
    gb = weights.get(bits, max(weights.values()))
    chosen = (getattr(model, "info", None) or {}).get("resident_quantize_chosen_by")
    label = "bf16" if bits is None else f"q{bits}"
    return f"  resident {label} ({gb:.1f} GiB{f', chosen by {chosen}' if chosen else ''})"


def _models_for_budget(ctx: click.Context, budget_gb: float, as_json: bool) -> None:
    from ..memory.sizing import fits_table

    host = make_host(ctx, memory_limit_gb=budget_gb)  # plugins choose resident bits for this budget
    rows = fits_table(host)
    if as_json:
        click.echo(json.dumps({"budget_gb": budget_gb, "models": rows}, indent=2))
        return
    click.echo(f"memory budget {budget_gb:.2f} GiB (a Mac's budget is 2/3 of its RAM up to 32 GB, 3/4 above)")
    for row in rows:
        bits = "bf16" if row["resident_quantize"] is None else f"q{row['resident_quantize']}"
        chosen = f", chosen by {row['chosen_by']}" if row["chosen_by"] else ""
        click.echo(f"{row['family']}:{row['model']}  resident {bits} ({row['resident_weights_gb']:.1f} GiB{chosen})")
        for req in row["requests"]:
            mark = "fits " if req["fits"] else "no   "
            click.echo(f"  {mark} {req['label']:<32} needs {req['needs_gb']:6.1f} GiB")


@click.command()
@click.argument("family", required=False)
@click.pass_context
def openapi(ctx: click.Context, family: str | None) -> None:
    """Print the root OpenAPI document, or FAMILY's capability document."""
    from ..openapi.generate import capability_document
    from ..openapi.root import root_document

    host = make_host(ctx)
    if family is None:
        _dump(root_document(host))
        return
    if family not in host.registry:
        raise click.BadParameter(f"no capability {family!r}; installed: "
                                 f"{', '.join(c.name for c in host.registry) or 'none'}")
    registered = next(r for r in host.registry.registered() if r.capability.name == family)
    _dump(capability_document(registered.capability, version=registered.capability.version,
                              extra_routes=host.plugin_routes.get(registered.plugin, ())))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def config(ctx: click.Context, as_json: bool) -> None:
    """Show every setting's effective value and where it came from
    (default < config file < KIAPI_* environment < command line)."""
    from ..settings import Settings, describe

    loaded = load(ctx)
    values = msgspec.to_builtins(loaded.settings)
    if values.get("auth_token"):
        values["auth_token"] = "***"
    if values.get("cluster_url"):
        from .cluster import redact_url

        values["cluster_url"] = redact_url(values["cluster_url"])
    rows = {"core": {k: {"value": v, "source": loaded.sources.get(k, "default"), "env": f"KIAPI_{k.upper()}"}
                     for k, v in values.items()}}
    docs = {"core": describe(Settings)}
    host = make_host(ctx)
    for capability in host.registry:
        if capability.settings is None:
            continue
        plugin_values = msgspec.to_builtins(host.plugin_settings(capability.name))
        sources = host.plugin_setting_sources(capability.name)
        prefix = f"KIAPI_{capability.name.upper().replace('-', '_')}_"
        rows[capability.name] = {k: {"value": v, "source": sources.get(k, "default"), "env": prefix + k.upper()}
                                 for k, v in plugin_values.items()}
        docs[capability.name] = describe(capability.settings)
    if as_json:
        click.echo(json.dumps({"config_file": loaded.config_file, "settings": rows}, indent=2))
        return
    click.echo(f"config file: {loaded.config_file or '(none)'}")
    for section, entries in rows.items():
        click.secho(f"\n[{section}]", bold=True)
        for name, row in entries.items():
            click.echo(f"  {row['env']} = {json.dumps(row['value'])}   ({row['source']})")
            if docs[section].get(name):
                click.echo(f"      {docs[section][name]}")
