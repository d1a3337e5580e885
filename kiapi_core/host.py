"""The Host: one server's worth of state, built from settings.

Nothing in kiapi_core is global: ``build_host`` makes a plugin manager, loads plugins, builds
the registry, the file store, the model manager and the job manager, and hands them out
through one object. Tests build as many hosts as they like.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pluggy

from . import __version__
from .errors import SettingsError, StartupError, Unavailable
from .files.blobstore import BlobStore
from .files.quota import StorageQuota
from .files.store import FileStore
from .jobs.manager import JobManager
from .jobs.services import JobServices
from .jobs.sqlite_store import SqliteJobStore
from .logs import JobLifecycleLog
from .memory.budget import Budget, resolve_budget
from .memory.manager import ModelManager
from .memory.warmup import parse_warmup
from .metrics import HostMetrics
from .plugin_extras import collect_commands, collect_routes
from .plugins import PluginRecord, load_plugins, new_plugin_manager, register_capabilities
from .registry import Registry
from .settings import Loaded, Settings, load_settings
from .webhooks import WebhookDispatcher

log = logging.getLogger("kiapi")


class Host:
    """Settings, plugins, registry and the shared services every route and handler uses."""

    version = __version__

    def __init__(self, loaded: Loaded, pm: pluggy.PluginManager, plugins: list[PluginRecord],
                 registry: Registry, budget: Budget | None = None) -> None:
        self.loaded = loaded
        self.settings: Settings = loaded.settings
        self.pm = pm
        self.plugins = plugins
        self.registry = registry
        self._plugin_settings: dict[str, Any] = {}
        self._plugin_setting_sources: dict[str, dict[str, str]] = {}
        data = self.settings.data_path
        self.files: BlobStore = FileStore(data / "files", ttl_s=self.settings.file_ttl_s,
                                          output_ttl_s=self.settings.job_ttl_s, keep=self._job_still_kept)
        self.files.quota = StorageQuota.for_root(self.files.root, self.settings.max_storage_gb)
        self.models = ModelManager(settings=self.settings, registry=registry,
                                   plugin_settings=self.plugin_settings, cache_dir=self.cache_dir,
                                   demo=self.settings.demo, budget=budget)
        #: The memory budget in GiB (plugins size their resident models from it).
        self.memory_budget_gb = self.models.budget.gb
        if self.settings.cluster_url:  # several hosts on PostgreSQL (docs/cluster.md)
            from .cluster.setup import cluster_services

            # File bytes live in PostgreSQL: KIAPI_MAX_STORAGE_GB bounds them there, and the
            # local copy is a cache with its own bound (KIAPI_CLUSTER_CACHE_GB).
            self.files, self.jobs = cluster_services(self)
        else:
            services = JobServices(files=self.files, models=self.models, plugin_settings=self.plugin_settings,
                                   cache_dir=self.cache_dir, work_root=data / "work", demo=self.settings.demo)
            self.jobs = JobManager(settings=self.settings, services=services,
                                   store=SqliteJobStore(data / "jobs.sqlite3", ttl_s=self.settings.job_ttl_s,
                                                        max_jobs=self.settings.max_jobs))
        self._background: list[asyncio.Task[Any]] = []
        self.metrics = HostMetrics(self)
        self.jobs.listeners += [self.metrics.on_job, JobLifecycleLog(registry)]
        self.models.listeners.append(self.metrics.on_model)
        self.webhooks = WebhookDispatcher(self.settings, data / "webhooks.sqlite3",
                                          on_attempt=lambda e, o: self.metrics.webhooks.labels(e, o).inc(),
                                          store=getattr(self.jobs, "webhook_store", None))  # a cluster's is shared
        self.jobs.listeners.append(self.webhooks.on_job)
        #: Routes and CLI commands plugins added (``register_routes``/``register_commands``),
        #: checked and by plugin name; filled in by :func:`build_host`.
        self.plugin_routes: dict[str, list[Any]] = {}
        self.plugin_commands: dict[str, Any] = {}

    @property
    def plugin_errors(self) -> list[PluginRecord]:
        """The plugins that failed to load or register (skipped), for ``/health`` and the CLI."""
        return [p for p in self.plugins if p.error]

    def _job_still_kept(self, record: Any) -> bool:
        """Retention: a job's outputs never expire while its record is kept (one policy)."""
        job_id = record.meta.get("job_id")
        return isinstance(job_id, str) and self.jobs.status_of(job_id) is not None

    # -- plugin facing -------------------------------------------------------------------
    def plugin_settings(self, family: str, schema: type | None = None) -> Any:
        """The settings Struct of capability ``family`` (``None`` if it declares none).

        ``schema`` defaults to the registered capability's ``settings``; pass it while
        registering, when the capability is not in the registry yet."""
        if family not in self._plugin_settings:
            schema = schema or self.registry.get(family).settings
            if schema is None:
                self._plugin_settings[family] = None
            else:
                value: Any
                value, sources = self.loaded.plugin(family, schema)
                self._plugin_settings[family] = value
                self._plugin_setting_sources[family] = sources
        return self._plugin_settings[family]

    def plugin_setting_sources(self, family: str) -> dict[str, str]:
        self.plugin_settings(family)
        return self._plugin_setting_sources.get(family, {})

    def cache_dir(self, family: str) -> Path:
        """A per-capability directory for derived data (demo weights, converted models)."""
        path = self.settings.data_path / "models" / family
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker thread and background duties; called by the app's lifespan."""
        self.settings.data_path.mkdir(parents=True, exist_ok=True)
        log.info("kiapi %s: data in %s%s", self.version, self.settings.data_path,
                 " (demo mode: tiny random-weight models, outputs are noise)" if self.settings.demo else "")
        log.info("%s", self.models.budget_description())
        freed = await asyncio.to_thread(sweep_work_dirs, self.settings.data_path / "work")
        if freed:
            log.info("removed %d work directories left by jobs a crash cut off", freed)
        await self.webhooks.start()  # first: jobs a crash cut off report their end to it
        await self.jobs.start()
        self._background.append(asyncio.create_task(self._sweep_storage()))
        self._background.append(asyncio.create_task(self._sweep_idle_models()))
        for family, model in self.models.parse_warmup(self.settings.warmup):
            self._background.append(asyncio.create_task(self._warm(family, model)))

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        await self.jobs.stop(self.settings.shutdown_grace_s)
        await self.webhooks.stop()
        await asyncio.to_thread(self.models.close)

    async def _sweep_storage(self, interval_s: float = 300.0) -> None:
        """Retention: expired job records first, then the files no kept job holds any more."""
        while True:
            try:
                await asyncio.to_thread(self.jobs.prune_expired)
                removed = await self.files.asweep_expired()
                if removed:
                    log.info("retention: %d expired file(s) deleted", removed,
                             extra={"event": "retention", "files_deleted": removed})
            except (OSError, Unavailable) as exc:  # a vanished file mid-sweep, a cluster database away;
                # the next round catches up
                log.warning("storage sweep failed: %s", exc)
            await asyncio.sleep(interval_s)

    async def _sweep_idle_models(self, interval_s: float = 30.0) -> None:
        """Unload models idle for longer than KIAPI_MODEL_TTL_S, on the model thread (MLX)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.jobs.run_on_worker(self.models.sweep_idle)
            except Unavailable:
                return  # shutting down: the models are closed with the host
            except Exception as exc:  # a failed sweep must not stop the server
                log.warning("idle model sweep failed: %s", exc)

    async def _warm(self, family: str, model: str) -> None:
        try:
            await self.jobs.run_on_worker(lambda: self.models.warm(family, model))
            log.info("warmed %s:%s", family, model)
        except Exception as exc:  # warmup is best effort, the server stays up
            log.warning("warmup of %s:%s failed: %s", family, model, exc)


def build_host(
    settings: Settings | Loaded | None = None,
    *,
    plugins: Sequence[Any] = (),
    load_entrypoints: bool = True,
    diagnose: bool = False,
) -> Host:
    """Build a host: load plugins (entry points unless disabled, plus ``plugins``), register
    their capabilities, routes and commands, and create the services.

    A plugin that fails in any way is recorded (``host.plugins``) and skipped; the rest is
    served. Raises PluginError for any plugin failure in strict mode, SettingsError for a
    settings mistake. ``diagnose`` (``kiapi plugins``) never raises for a plugin: strict mode
    is off and a plugin's settings mistake is recorded on the plugin."""
    if settings is None:
        loaded = load_settings()
    elif isinstance(settings, Settings):
        loaded = Loaded(settings=settings, sources={}, config_file=None, config={}, env={})
    else:
        loaded = settings
    if diagnose:
        loaded = msgspec.structs.replace(loaded, settings=msgspec.structs.replace(loaded.settings,
                                                                                  strict_plugins=False))
    settings_ = loaded.settings
    pm = new_plugin_manager()
    records = load_plugins(pm, settings_, extra=plugins, load_entrypoints=load_entrypoints)
    registry = Registry()
    budget = resolve_budget(settings_)  # once: plugins size their models from it
    host = _HostUnderConstruction(loaded, pm, records, registry, budget.gb)
    register_capabilities(pm, records, registry, host, settings_, diagnose=diagnose)
    built = Host(loaded, pm, records, registry, budget)
    routes = collect_routes(pm, records, registry, built, settings_)
    from .cli import COMMANDS

    built.plugin_commands = collect_commands(pm, records, registry, settings_, COMMANDS)
    serving = {r.name for r in records if r.error is None}  # a skipped record may share a winner's name
    built.plugin_routes = {name: r for name, r in routes.items() if name in serving}
    _check_settings(built, records if diagnose else None)
    return built


def _check_settings(host: Host, diagnose: list[PluginRecord] | None = None) -> None:
    """Read every capability's settings and the warm-up list now, so a mistake stops start-up
    with its message instead of failing requests later (SettingsError / StartupError). With
    ``diagnose`` (the records), a capability's settings mistake is recorded on its plugin."""
    if host.settings.role != "all" and not host.settings.cluster_url:
        raise StartupError(f"KIAPI_ROLE={host.settings.role} needs a cluster: set KIAPI_CLUSTER_URL "
                           "(docs/cluster.md), or leave KIAPI_ROLE at all")
    for registered in host.registry.registered():
        try:
            host.plugin_settings(registered.capability.name)
        except SettingsError as exc:
            record = next((r for r in diagnose or [] if r.name == registered.plugin), None)
            if record is None:
                raise
            record.error = f"settings: {exc}"
    if diagnose is not None:
        return
    parse_warmup(host.settings.warmup, host.registry)
    tables = [name for name, value in host.loaded.config.items() if isinstance(value, dict)]
    strays = [name for name in tables if name not in host.registry]
    if strays:
        known = ", ".join(c.name for c in host.registry) or "none installed"
        log.warning("config file %s: [%s] names no installed capability (capabilities: %s); "
                    "its settings are ignored", host.loaded.config_file, "], [".join(strays), known)


class _HostUnderConstruction:
    """What ``register_capabilities(host=...)`` sees: settings and registry, no services yet."""

    version = __version__

    def __init__(self, loaded: Loaded, pm: pluggy.PluginManager, plugins: list[PluginRecord],
                 registry: Registry, memory_budget_gb: float) -> None:
        self.loaded = loaded
        self.settings = loaded.settings
        self.pm = pm
        self.plugins = plugins
        self.registry = registry
        #: The memory budget in GiB, so a plugin can choose its resident quantization from it.
        self.memory_budget_gb = memory_budget_gb

    def plugin_settings(self, family: str, schema: type | None = None) -> Any:
        """A plugin's settings while it registers: pass its settings Struct as ``schema``.
        Invalid values raise (StartupError), naming the setting."""
        if schema is None:
            schema = self.registry.get(family).settings
        return None if schema is None else self.loaded.plugin(family, schema)[0]


def sweep_work_dirs(root: Path) -> int:
    """Remove every job work directory under ``root``. Called before the worker starts, while
    no job runs (the data directory lock keeps other servers out): whatever is there was left
    by a crash (``kill -9`` during training leaves its checkpoints and extracted dataset)."""
    if not root.is_dir():
        return 0
    removed = 0
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed

