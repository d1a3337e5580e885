"""Routes and CLI commands that plugins add, collected one plugin at a time and checked.

``register_routes`` and ``register_commands`` run once per host while it is built (not when
the app is built), so a plugin that breaks the rules is reported by ``kiapi plugins`` and
``/health`` like any other failure, and skipped whole:

* a plugin's routes must lie under the prefix of a capability it registered
  (``/v1/{domain}/{name}/...``) and may not take a path the core generates there (operations,
  ``models``, ``openapi.json``, ``docs``, ``redoc``) or one an earlier plugin took;
* a plugin's commands may not take the name of a core command or of an earlier plugin's.

The core's default plugins are exempt from the prefix rule: they serve the core's own routes.
Routes are handled by duck typing (``path``, ``methods``) so this module never imports
Starlette: it belongs to the services layer.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import click
import pluggy

from .errors import PluginError
from .plugins import PluginRecord, fail
from .registry import RESERVED_OPERATIONS, Registry
from .settings import Settings


def collect_routes(pm: pluggy.PluginManager, records: list[PluginRecord], registry: Registry, host: Any,
                   settings: Settings) -> dict[str, list[Any]]:
    """Each plugin's routes by plugin name, in precedence order; offenders are skipped."""
    by_name = {r.name: r for r in records if r.error is None}
    taken: dict[tuple[str, str], str] = {}
    for capability in registry.registered():
        for op in capability.capability.operations:
            taken[(f"{capability.capability.prefix}/{op.name}", "POST")] = f"{capability.distribution} (operation)"
        for reserved in RESERVED_OPERATIONS:
            taken[(f"{capability.capability.prefix}/{reserved}", "GET")] = "kiapi-core"
    collected: dict[str, list[Any]] = {}
    impls = sorted(pm.hook.register_routes.get_hookimpls(),
                   key=lambda i: records.index(by_name[i.plugin_name]) if i.plugin_name in by_name else -1)
    for impl in impls:
        record = by_name.get(impl.plugin_name)
        label = record.distribution if record else impl.plugin_name
        try:
            returned: Any = impl.function(**_kwargs(impl, host=host))
            routes = list(returned or [])
            prefixes = None if record is None or record.default else [
                registry.get(name).prefix + "/" for name in record.capabilities]
            claimed = _check_routes(routes, prefixes, taken, label)
        except Exception as exc:  # the plugin's own mistake
            if record is None:
                raise
            fail(record, f"register_routes: {exc}", settings, exc)
            skip(pm, record, registry)
            continue
        taken.update(claimed)
        collected[impl.plugin_name] = routes
    return collected


def _check_routes(routes: list[Any], prefixes: list[str] | None, taken: dict[tuple[str, str], str],
                  label: str) -> dict[tuple[str, str], str]:
    claimed: dict[tuple[str, str], str] = {}
    for route in routes:
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            raise PluginError(f"returned {type(route).__name__}, which is not a route with a path")
        if prefixes is not None and not any(path.startswith(p) for p in prefixes):
            where = " or ".join(p + "..." for p in prefixes) or "(it registers no capability)"
            raise PluginError(f"route {path} is outside its capability's prefix; a plugin's routes must lie "
                              f"under {where}")
        for method in sorted(getattr(route, "methods", None) or ["*"]):
            key = (path, method)
            other = taken.get(key) or taken.get((path, "*")) or claimed.get(key)
            if other is None and method == "*":
                other = next((who for (p, _), who in taken.items() if p == path), None)
            if other is not None:
                raise PluginError(f"route {method} {path} is already served by {other}; a plugin cannot "
                                  "replace another's routes or the core's")
            claimed[key] = label
    return claimed


def collect_commands(pm: pluggy.PluginManager, records: list[PluginRecord], registry: Registry,
                     settings: Settings, core_commands: Collection[str]) -> dict[str, click.Command]:
    """Every plugin's CLI commands by name; a plugin taking a core command's name or an
    earlier plugin's is skipped."""
    by_name = {r.name: r for r in records if r.error is None}
    owners: dict[str, str] = {name: "kiapi-core" for name in core_commands}
    commands: dict[str, click.Command] = {}
    impls = sorted(pm.hook.register_commands.get_hookimpls(),
                   key=lambda i: records.index(by_name[i.plugin_name]) if i.plugin_name in by_name else -1)
    for impl in impls:
        record = by_name.get(impl.plugin_name)
        label = record.distribution if record else impl.plugin_name
        group = click.Group()
        try:
            impl.function(**_kwargs(impl, cli=group))
            clashes = [f"{name!r} (already {owners[name]}'s)" for name in group.commands if name in owners]
            if clashes:
                raise PluginError(f"tries to take over the command {', '.join(clashes)}; "
                                  "choose another name")
        except Exception as exc:  # the plugin's own mistake
            if record is None:
                raise
            fail(record, f"register_commands: {exc}", settings, exc)
            skip(pm, record, registry)
            continue
        for name, command in group.commands.items():
            owners[name] = label
            commands[name] = command
    return commands


def skip(pm: pluggy.PluginManager, record: PluginRecord, registry: Registry) -> None:
    """Take a plugin out after it registered: its capabilities and hooks go."""
    for name in record.capabilities:
        registry.remove(name)
    record.capabilities, record.models = [], {}
    if pm.get_plugin(record.name) is not None:
        pm.unregister(name=record.name)


def _kwargs(impl: Any, **available: Any) -> dict[str, Any]:
    return {k: v for k, v in available.items() if k in impl.argnames}


__all__ = ["collect_commands", "collect_routes", "skip"]
