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
    """List installed plugins with their capabilities, models and load errors."""
    host = make_host(ctx)
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
        for capability, models in r.models.items():
            click.echo(f"  {capability}: models {', '.join(models)}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List every model of every capability, with aliases."""
    host = make_host(ctx)
    specs = [spec for c in host.registry for spec in host.registry.model_specs(c.name)]
    if as_json:
        _dump(specs)
        return
    for spec in specs:
        aliases = f"  aliases: {', '.join(spec.aliases)}" if spec.aliases else ""
        click.echo(f"{spec.family}:{spec.name}{' (default)' if spec.default else ''}{aliases}")


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
    capability = host.registry.get(family)
    _dump(capability_document(capability, version=capability.version))


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
