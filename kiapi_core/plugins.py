"""Finding, loading and registering plugins.

Entry points of the ``kiapi`` group are loaded one at a time (not with pluggy's
``load_setuptools_entrypoints``) so that one broken plugin is reported and skipped instead of
taking the host down, and so every capability can be traced to the distribution that
registered it. ``strict`` (``KIAPI_STRICT_PLUGINS=1``, on in tests) turns any failure into an
error.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import logging
import traceback
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import msgspec
import pluggy

from . import hookspecs
from .errors import PluginError, SettingsError, StartupError
from .registry import Capability, Registry
from .settings import Settings

log = logging.getLogger("kiapi.plugins")

#: The core's own behaviour, registered through the same hooks as any plugin.
DEFAULT_PLUGINS = (
    "kiapi_core.default_plugins.health",
    "kiapi_core.default_plugins.files",
    "kiapi_core.default_plugins.jobs",
    "kiapi_core.default_plugins.memory",
)
ENTRY_POINT_GROUP = "kiapi"


class PluginRecord(msgspec.Struct, kw_only=True):
    """One plugin as ``kiapi plugins`` and ``/health`` show it."""

    name: str
    distribution: str
    version: str
    entry_point: str | None = None
    capabilities: list[str] = msgspec.field(default_factory=list)
    models: dict[str, list[str]] = msgspec.field(default_factory=dict)
    hooks: list[str] = msgspec.field(default_factory=list)
    error: str | None = None
    default: bool = False


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("kiapi")
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(
    pm: pluggy.PluginManager,
    settings: Settings,
    *,
    extra: Sequence[Any] = (),
    load_entrypoints: bool = True,
) -> list[PluginRecord]:
    """Register default plugins, entry-point plugins and ``extra`` (modules, import strings or
    objects) on ``pm``. Failures are recorded on the returned records, or raised when
    ``settings.strict_plugins``."""
    records: list[PluginRecord] = []
    for name in DEFAULT_PLUGINS:
        module = importlib.import_module(name)
        pm.register(module, name=name)
        records.append(PluginRecord(name=name, distribution="kiapi-core", version=_core_version(),
                                    default=True, hooks=_hooks(pm, module)))
    if load_entrypoints:
        for ep, dist in _entry_points():
            if not _wanted(ep.name, dist, settings):
                continue
            record = PluginRecord(name=ep.name, distribution=dist.metadata["Name"], version=dist.version,
                                  entry_point=f"{ep.name} = {ep.value}")
            records.append(record)
            reason = core_incompatibility(dist)
            if reason is not None:  # skipped before import: its hooks may not fit this core
                _fail(record, reason, settings, PluginError(reason))
                continue
            try:
                plugin = ep.load()
                _register(pm, plugin, ep.name)
                record.hooks = _hooks(pm, plugin)
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
                _fail(record, f"could not be imported: {exc!r}", settings, exc)
    for item in extra:
        plugin = importlib.import_module(item) if isinstance(item, str) else item
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        dist = _distribution_of(plugin)
        record = PluginRecord(name=name, distribution=dist[0], version=dist[1])
        records.append(record)
        try:
            _register(pm, plugin, name)
            record.hooks = _hooks(pm, plugin)
        except Exception as exc:  # noqa: BLE001
            _fail(record, f"could not be registered: {exc!r}", settings, exc)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        bad = _record_for(records, exc.plugin, pm)
        message = f"implements a hook that does not exist: {exc}"
        if bad is None or settings.strict_plugins:
            raise PluginError(f"{bad.distribution if bad else 'a plugin'} {message}") from exc
        _fail(bad, message, settings, exc)
        pm.unregister(exc.plugin)
    return records


def register_capabilities(pm: pluggy.PluginManager, records: list[PluginRecord], registry: Registry,
                          host: Any, settings: Settings) -> None:
    """Call each plugin's ``register_capabilities`` separately, so that its capabilities carry
    its distribution and a failing plugin can be rolled back on its own."""
    by_name = {r.name: r for r in records}
    for impl in pm.hook.register_capabilities.get_hookimpls():  # registration order
        record = by_name.get(impl.plugin_name)
        distribution = record.distribution if record else impl.plugin_name
        collected: list[Capability] = []

        def register(capability: Capability, _collected: list[Capability] = collected) -> None:
            if not isinstance(capability, Capability):
                raise PluginError(f"register() takes a Capability, got {type(capability).__name__}")
            _collected.append(capability)

        try:
            impl.function(**{k: v for k, v in {"register": register, "host": host}.items()
                             if k in impl.argnames})
            staged = Registry()
            for capability in collected:
                staged.add(capability, plugin=impl.plugin_name, distribution=distribution)
        except SettingsError:
            raise  # the operator's mistake, not the plugin's: never skip a plugin over it
        except Exception as exc:  # noqa: BLE001 - a plugin's own declaration problem
            if record is None:
                raise
            _fail(record, f"failed to register its capabilities: {exc}", settings, exc)
            pm.unregister(name=impl.plugin_name)
            continue
        for capability in collected:  # clashes between distributions are fatal (StartupError)
            registry.add(capability, plugin=impl.plugin_name, distribution=distribution)
        if record is not None:
            record.capabilities = [c.name for c in collected]
            record.models = {c.name: [m.name for m in c.models] for c in collected}


def core_incompatibility(dist: metadata.Distribution, core_version: str | None = None) -> str | None:
    """Why ``dist`` cannot run on this kiapi-core, or ``None`` when its ``Requires-Dist:
    kiapi-core ...`` range (if any) allows the running version. Checked before importing the
    plugin, so a plugin written for another plugin API never half-registers."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    running = core_version or _core_version()
    for line in dist.requires or ():
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(requirement.name) != "kiapi-core":
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.specifier and not requirement.specifier.contains(running, prereleases=True):
            wanted = ",".join(sorted(map(str, requirement.specifier), key=lambda s: (s[0] not in ">~=", s)))
            return (f"requires kiapi-core{wanted} but kiapi-core {running} is running; "
                    f"install a {dist.metadata['Name']} release made for kiapi-core {running}, "
                    "or a kiapi-core in its range")
    return None


def _register(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    if pm.is_registered(plugin) or pm.get_plugin(name) is not None:
        raise PluginError(f"a plugin named {name!r} is already registered")
    pm.register(plugin, name=name)


def _fail(record: PluginRecord, message: str, settings: Settings, exc: BaseException) -> None:
    record.error = message
    text = f"plugin {record.name} ({record.distribution} {record.version}) {message}"
    if settings.strict_plugins:
        raise PluginError(text + " [strict mode: KIAPI_STRICT_PLUGINS=1]") from exc
    log.error("%s; skipped it\n%s", text, "".join(traceback.format_exception(exc)).rstrip())


def _entry_points() -> Iterable[tuple[metadata.EntryPoint, metadata.Distribution]]:
    """Entry points of the kiapi group, once each even if a distribution is seen twice."""
    seen: set[tuple[str, str]] = set()
    names: dict[str, str] = {}
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            key = (dist.metadata["Name"], ep.value)
            if key in seen:
                continue
            seen.add(key)
            if ep.name in names and names[ep.name] != dist.metadata["Name"]:
                raise StartupError(f"the plugin name {ep.name!r} is used by both {names[ep.name]} and "
                                   f"{dist.metadata['Name']}; uninstall one of them")
            names[ep.name] = dist.metadata["Name"]
            yield ep, dist


def installed_names() -> set[str]:
    """Entry-point and distribution names of every installed plugin (loaded or not)."""
    return {name for ep, dist in _entry_points() for name in (ep.name, dist.metadata["Name"])}


def _wanted(name: str, dist: metadata.Distribution, settings: Settings) -> bool:
    names = {name, dist.metadata["Name"]}
    if names & set(settings.disable_plugins):
        return False
    return settings.load_plugins is None or bool(names & set(settings.load_plugins))


def _hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    return sorted(c.name for c in pm.get_hookcallers(plugin) or [])


def _record_for(records: list[PluginRecord], plugin: Any, pm: pluggy.PluginManager) -> PluginRecord | None:
    name = pm.get_name(plugin)
    return next((r for r in records if r.name == name), None)


def _distribution_of(plugin: Any) -> tuple[str, str]:
    module = plugin if isinstance(plugin, ModuleType) else importlib.import_module(type(plugin).__module__)
    top = (module.__name__ or "").split(".")[0]
    for dist_name in metadata.packages_distributions().get(top, []):
        return dist_name, metadata.version(dist_name)
    return f"{top} (not installed)", "0"


def _core_version() -> str:
    from . import __version__

    return __version__
