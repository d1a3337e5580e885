"""Finding, loading and registering plugins.

Entry points of the ``kiapi`` group are loaded one at a time (not with pluggy's
``load_setuptools_entrypoints``) so that one broken plugin is reported and skipped instead of
taking the host down, and so every capability can be traced to the distribution that
registered it. ``strict`` (``KIAPI_STRICT_PLUGINS=1``, on in tests) turns any failure into an
error.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata as metadata
import inspect
import logging
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import msgspec
import pluggy

from . import hookspecs
from .errors import PluginError, SettingsError, StartupError
from .plugin_api import adapt
from .registry import Capability, KiapiDeprecationWarning, Registry
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
    #: Deprecated declaration names or shapes the plugin uses (each a sentence with its place):
    #: served for now, refused by the next release.
    deprecations: list[str] = msgspec.field(default_factory=list)


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
    objects) on ``pm``, in that order (the documented precedence order: entry points sorted by
    distribution, then entry-point name). Failures are recorded on the returned records, or
    raised when ``settings.strict_plugins``."""
    records: list[PluginRecord] = []
    for name in DEFAULT_PLUGINS:
        module = importlib.import_module(name)
        pm.register(module, name=name)
        records.append(PluginRecord(name=name, distribution="kiapi-core", version=_core_version(),
                                    default=True, hooks=_hooks(pm, module)))
    if load_entrypoints:
        owners: dict[str, str] = {}  # entry-point name -> the (wanted) distribution using it first
        for ep, dist in _entry_points():
            if not _wanted(ep.name, dist, settings):
                continue
            record = PluginRecord(name=ep.name, distribution=dist.metadata["Name"], version=dist.version,
                                  entry_point=f"{ep.name} = {ep.value}")
            records.append(record)
            taken_by = owners.setdefault(ep.name, record.distribution)
            if taken_by != record.distribution:
                reason = (f"uses the plugin name {ep.name!r}, which {taken_by} (first in precedence order) "
                          f"already uses; {taken_by} is loaded instead. To load this one, set "
                          f"KIAPI_DISABLE_PLUGINS={taken_by} or uninstall one of them")
                fail(record, reason, settings, PluginError(reason))
                continue
            incompatible = core_incompatibility(dist)
            if incompatible is not None:  # skipped before import: its hooks may not fit this core
                fail(record, incompatible, settings, PluginError(incompatible))
                continue
            try:
                with deprecations_of(record):
                    plugin = ep.load()
            except Exception as exc:  # any import failure is the plugin's
                fail(record, f"could not be imported: {exc!r}", settings, exc)
                continue
            _register_checked(pm, plugin, record, settings)
    for item in extra:
        plugin = importlib.import_module(item) if isinstance(item, str) else item
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        dist_name, version = _distribution_of(plugin)
        record = PluginRecord(name=name, distribution=dist_name, version=version)
        records.append(record)
        _register_checked(pm, plugin, record, settings)
    return records


def _register_checked(pm: pluggy.PluginManager, plugin: Any, record: PluginRecord, settings: Settings) -> None:
    """Register one plugin and check its hook implementations on their own, so that every
    plugin's mistakes are reported (pluggy's ``check_pending`` stops at the first offender)."""
    try:
        _register(pm, plugin, record.name)
    except Exception as exc:  # a hookimpl pluggy refuses (wrong arguments ...)
        fail(record, f"could not be registered: {exc}", settings, exc)
        return
    record.hooks = _hooks(pm, plugin)
    problems = hookimpl_problems(pm, plugin)
    if problems:
        pm.unregister(plugin)
        message = "; ".join(problems)
        fail(record, message, settings, PluginError(message))


def hookimpl_problems(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """What is wrong with ``plugin``'s hook implementations: names no hook has (misspellings)
    and ``async def`` implementations (pluggy calls hooks synchronously: a coroutine function
    would return an un-awaited coroutine and register nothing)."""
    problems: list[str] = []
    known = sorted(name for name in dir(pm.hook) if not name.startswith("_")
                   and getattr(pm.hook, name).has_spec())
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            if not caller.has_spec() and not impl.optionalhook:
                close = difflib.get_close_matches(caller.name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (hooks: {', '.join(known)})"
                problems.append(f"implements a hook that does not exist: {caller.name!r}{hint}")
            elif inspect.iscoroutinefunction(impl.function) or inspect.isasyncgenfunction(impl.function):
                problems.append(f"implements {caller.name!r} with 'async def'; kiapi hooks are plain functions "
                                "(do async work in handlers or routes instead)")
    return problems


def register_capabilities(pm: pluggy.PluginManager, records: list[PluginRecord], registry: Registry,
                          host: Any, settings: Settings, *, diagnose: bool = False) -> None:
    """Call each plugin's ``register_capabilities`` separately, so that its capabilities carry
    its distribution and a failing plugin can be skipped on its own. Two plugins registering
    one capability name: the first in precedence order (see :func:`precedence`) is kept, the
    other skipped with an error naming both. ``diagnose`` (``kiapi plugins``) records a
    plugin's settings mistake on the plugin instead of raising it."""
    by_name = {r.name: r for r in records if r.error is None}  # registered ones (names are unique there)
    staged: list[_Staged] = []
    for impl in pm.hook.register_capabilities.get_hookimpls():
        record = by_name.get(impl.plugin_name)
        if record is None:
            raise PluginError(f"plugin {impl.plugin_name!r} was registered without a record")
        collected = _call_register(impl, record, host, settings, diagnose)
        if collected is None:
            pm.unregister(name=impl.plugin_name)
            continue
        staged.append(_Staged(record=record, capabilities=collected, order=records.index(record)))
    winners: dict[str, _Staged] = {}
    for entry in staged:
        for capability in entry.capabilities:
            current = winners.get(capability.name)
            if current is None or precedence(entry, capability.name) < precedence(current, capability.name):
                winners[capability.name] = entry
    for entry in sorted(staged, key=lambda e: e.order):
        lost = [(c.name, winners[c.name]) for c in entry.capabilities if winners[c.name] is not entry]
        if lost:
            name, winner = lost[0]
            reason = (f"registers capability {name!r}, which {winner.record.distribution} "
                      f"{winner.record.version} also registers; {winner.record.distribution} is served "
                      f"(it comes first: {PRECEDENCE_RULE}). To serve this one instead, set "
                      f"KIAPI_DISABLE_PLUGINS={winner.record.name}, or uninstall one of them")
            fail(entry.record, reason, settings, PluginError(reason))
            pm.unregister(name=entry.record.name)
            continue
        for capability in entry.capabilities:
            registry.add(capability, plugin=entry.record.name, distribution=entry.record.distribution)
        entry.record.capabilities = [c.name for c in entry.capabilities]
        entry.record.models = {c.name: [m.name for m in c.models] for c in entry.capabilities}


#: How clashes are decided, in the words the error messages use.
PRECEDENCE_RULE = ("a distribution named kiapi-<capability> owns that capability; otherwise entry-point "
                   "plugins in order of distribution name, then plugins passed in code")


class _Staged(msgspec.Struct, kw_only=True):
    record: PluginRecord
    capabilities: list[Capability]
    order: int


def precedence(entry: _Staged, capability: str) -> tuple[int, int]:
    """Sort key of a plugin claiming ``capability``: lower wins."""
    owner = _canonical(entry.record.distribution) == f"kiapi-{_canonical(capability)}"
    return (0 if owner else 1, entry.order)


def _call_register(impl: Any, record: PluginRecord, host: Any, settings: Settings,
                   diagnose: bool) -> list[Capability] | None:
    """One plugin's capabilities, checked on a scratch registry; ``None`` when it failed."""
    collected: list[Capability] = []

    def register(capability: Capability) -> None:
        if not isinstance(capability, Capability):
            raise PluginError(f"register() takes a Capability, got {type(capability).__name__}")
        collected.append(capability)

    try:
        with deprecations_of(record):
            impl.function(**{k: v for k, v in {"register": register, "host": host}.items() if k in impl.argnames})
        collected[:] = [adapt(capability, host) for capability in collected]  # plugin API 1 or 2
        staged = Registry()
        for capability in collected:
            staged.add(capability, plugin=impl.plugin_name, distribution=record.distribution)
    except SettingsError as exc:
        if not diagnose:
            raise  # the operator's mistake, not the plugin's: never skip a plugin over it
        record.error = f"settings: {exc}"
        return None
    except Exception as exc:  # a plugin's own declaration problem
        fail(record, f"failed to register its capabilities: {exc}", settings, exc)
        return None
    return collected


@contextmanager
def deprecations_of(record: PluginRecord) -> Iterator[None]:
    """Note on ``record`` (and log) every :class:`KiapiDeprecationWarning` the plugin's code
    raises while importing or declaring, so ``kiapi plugins`` names it even where Python hides
    deprecation warnings; other warnings go on as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", KiapiDeprecationWarning)
        yield
    for warning in caught:
        if not issubclass(warning.category, KiapiDeprecationWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno,
                                   source=warning.source)
            continue
        text = f"{warning.message} ({warning.filename}:{warning.lineno})"
        if text not in record.deprecations:
            record.deprecations.append(text)
            log.warning("plugin %s (%s %s): %s", record.name, record.distribution, record.version, text)


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


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


def fail(record: PluginRecord, message: str, settings: Settings, exc: BaseException) -> None:
    """Record that a plugin failed (and is skipped), log it, or raise it in strict mode."""
    record.error = message if record.error is None else f"{record.error}; {message}"
    text = f"plugin {record.name} ({record.distribution} {record.version}) {message}"
    if settings.strict_plugins:
        raise PluginError(text + " [strict mode: KIAPI_STRICT_PLUGINS=1]") from exc
    expected = isinstance(exc, (PluginError, StartupError)) or exc.__traceback__ is None
    trace = "" if expected else "".join(traceback.format_exception(exc)).rstrip()
    log.error("%s; skipped it%s", text, "\n" + trace if trace else "")


def _entry_points() -> list[tuple[metadata.EntryPoint, metadata.Distribution]]:
    """Entry points of the kiapi group, once each even if a distribution is seen twice, sorted
    by distribution name and entry-point name: the precedence order."""
    seen: set[tuple[str, str]] = set()
    found: list[tuple[metadata.EntryPoint, metadata.Distribution]] = []
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            key = (_canonical(dist.metadata["Name"]), ep.value)
            if key not in seen:
                seen.add(key)
                found.append((ep, dist))
    return sorted(found, key=lambda pair: (_canonical(pair[1].metadata["Name"]), pair[0].name))


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


def _distribution_of(plugin: Any) -> tuple[str, str]:
    module = plugin if isinstance(plugin, ModuleType) else importlib.import_module(type(plugin).__module__)
    top = (module.__name__ or "").split(".")[0]
    return _installed_as(top, tuple(sys.path))


@functools.lru_cache(maxsize=64)
def _installed_as(top: str, path: tuple[str, ...]) -> tuple[str, str]:
    """The distribution providing top-level package ``top`` (cached per ``sys.path``: scanning
    every installed distribution takes ~0.15 s, and tests build many hosts)."""
    for dist_name in metadata.packages_distributions().get(top, []):
        return dist_name, metadata.version(dist_name)
    # Editable installs list a .pth file, not the package: find the distribution by its
    # entry point instead.
    for ep, dist in _entry_points():
        if ep.value.split(":")[0].split(".")[0] == top:
            return dist.metadata["Name"], dist.version
    return f"{top} (not installed)", "0"


def _core_version() -> str:
    from . import __version__

    return __version__
