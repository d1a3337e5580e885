"""Settings: defaults < config file < ``KIAPI_*`` environment < command-line flags.

The host is built from one :class:`Settings` value; nothing reads the environment later. Each
value remembers where it came from, so ``kiapi config`` can show it. Plugin settings use the
same sources, namespaced: ``KIAPI_ERNIE_EDIT_REQUIRE_SQUARE`` or ``[ernie] edit_require_square``.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from .errors import SettingsError, StartupError

T = TypeVar("T")


def _default_data_dir() -> str:
    if sys.platform == "darwin":
        return str(Path.home() / "Library" / "Application Support" / "kiapi")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "kiapi")


def _default_config_file() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "kiapi" / "config.toml"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kiapi" / "config.toml"


#: What demo mode says wherever a result could be mistaken for a real one.
DEMO_NOTE = "demo mode: tiny random-weight model, the output is noise"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every core setting. Field docs are shown by ``kiapi config`` and docs/settings.md."""

    host: str = "127.0.0.1"
    "Address `kiapi serve` binds to."
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    "Port `kiapi serve` listens on (0: any free port, shown in the log)."
    demo: bool = False
    "Serve tiny random-weight demo models instead of real weights (outputs are noise)."
    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    "Directory holding all state: files, jobs, model caches."
    auth_token: str | None = None
    "When set, every endpoint except /health requires `Authorization: Bearer <token>`."
    insecure_no_auth: bool = False
    "Let `kiapi serve` bind beyond loopback without KIAPI_AUTH_TOKEN (anyone reaching the port can use it)."
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    "Extra host names the server answers to (Host header) besides localhost, IP addresses and KIAPI_HOST; `*`: any."
    cors_origins: list[str] = msgspec.field(default_factory=list)
    "Web origins (https://app.example) allowed to call the API from a browser (CORS); `*`: any."
    unknown_fields: Literal["reject", "typos", "warn"] = "typos"
    "Request fields no schema declares: `warn` accepts them, `typos` refuses near misses of a declared field (422), `reject` refuses all."
    max_text_chars: Annotated[int, Meta(ge=1)] = 100_000
    "Longest text field (a prompt) a request may carry, in characters (422 beyond)."
    max_storage_gb: Annotated[float, Meta(gt=0)] | None = None
    "Disk the stored files may use, in GB (507 beyond); unset: 90% of what is free at start plus what it holds. In a cluster: the bytes of all hosts' files in PostgreSQL (unset: no limit but the database's disk)."
    body_timeout_s: Annotated[float, Meta(gt=0)] = 60.0
    "Seconds a request body may take; after it, it must keep arriving at 64 KiB/s on average, and never pause this long (408)."
    strict_plugins: bool = False
    "Fail start-up when a plugin cannot be loaded, instead of skipping it."
    load_plugins: list[str] | None = None
    "Load only these plugins (entry-point or distribution names); empty list loads none."
    disable_plugins: list[str] = msgspec.field(default_factory=list)
    "Plugins (entry-point or distribution names) never to load."
    max_queue: Annotated[int, Meta(ge=1)] = 64
    "Jobs that may wait in the queue; more get 503 with Retry-After."
    pool_workers: Annotated[int, Meta(ge=1, le=64)] = 2
    "Threads running jobs of operations that never touch MLX (uses_mlx=False), beside the model thread."
    queue_model_affinity: bool = True
    "Let a queued job whose model is loaded start before queued jobs that would evict it (bounded below)."
    queue_max_bypass: Annotated[int, Meta(ge=0)] = 4
    "Most times a queued job may be overtaken that way; 0 keeps strict FIFO order."
    queue_max_bypass_s: Annotated[float, Meta(ge=0)] = 60.0
    "Most seconds a queued job may be held back that way, counted from when it was first overtaken."
    sync_timeout_s: Annotated[float, Meta(gt=0)] = 600.0
    "Seconds a sync request waits before answering 504 (the job keeps running)."
    job_ttl_s: Annotated[float, Meta(ge=0)] = 604800.0
    "Seconds finished jobs and their output files are kept (7 days; one policy: an output never expires while its job is kept); 0 keeps them until deleted."
    max_jobs: Annotated[int, Meta(ge=0)] = 1000
    "Finished jobs kept at most (oldest forgotten first)."
    max_upload_mb: Annotated[float, Meta(gt=0)] = 2048.0
    "Largest file accepted by POST /v1/files, in MiB (413 beyond)."
    max_body_mb: Annotated[float, Meta(gt=0)] = 64.0
    "Largest JSON request body, in MiB (413 beyond)."
    file_ttl_s: Annotated[float, Meta(ge=0)] = 0.0
    "Seconds uploads and URL/data-URL inputs are kept; 0 keeps them until deleted. Retention settings apply to files stored before a change too."
    allow_private_urls: bool = False
    "Allow URL inputs that resolve to loopback, private, link-local or reserved addresses."
    url_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    "Seconds a URL input may take to download."
    max_url_mb: Annotated[float, Meta(gt=0)] = 256.0
    "Largest URL input, in MiB."
    max_data_url_mb: Annotated[float, Meta(gt=0)] = 48.0
    "Largest decoded data URL input, in MiB."
    max_image_pixels: Annotated[int, Meta(ge=1)] = 100_000_000
    "Largest image input, in pixels (decompression-bomb guard)."
    memory_limit_gb: Annotated[float, Meta(gt=0)] | None = None
    "Memory budget for models and jobs, in GiB (2**30 bytes, as MLX counts); unset: a share of physical memory."
    model_ttl_s: Annotated[float, Meta(ge=0)] = 1800.0
    "Seconds an idle resident model stays loaded; 0 keeps it until evicted."
    cluster_url: str | None = None
    "PostgreSQL URL (postgresql://...) shared by several hosts: turns cluster mode on (docs/cluster.md)."
    role: Literal["all", "api", "worker"] = "all"
    "Cluster role: all (serve the API and run jobs), api (no jobs run here), worker (runs jobs)."
    cluster_advertise_url: str | None = None
    "URL other hosts and `kiapi cluster` show for this host; default http://<host>:<port>."
    cluster_host_id: str | None = None
    "This host's id in the cluster; default <hostname>-<port>."
    cluster_lease_s: Annotated[float, Meta(gt=0)] = 30.0
    "Seconds a running job's lease lasts; renewed every second (or third of it). A host silent longer loses the job."
    affinity_wait_s: Annotated[float, Meta(ge=0)] = 5.0
    "Seconds a queued job waits for a host that has its model resident before any host may take it."
    cluster_max_attempts: Annotated[int, Meta(ge=1)] = 2
    "Runs of a job whose host was lost, before it fails as host_lost."
    cluster_cache_gb: Annotated[float, Meta(gt=0)] = 20.0
    "Local cache of cluster files (bytes live in PostgreSQL), in GiB (2**30 bytes), held as copies are added; least recently used go first, never those in use."
    warmup: list[str] = msgspec.field(default_factory=list)
    "Models to load in the background at start-up, as family:model (ernie:turbo)."
    shutdown_grace_s: Annotated[float, Meta(ge=0)] = 30.0
    "Seconds a running job may finish after SIGTERM before it is canceled."
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    "Logging level: debug, info, warning, error."
    log_format: Literal["text", "json"] = "text"
    "Log line format: text (for people) or json (one object per line, for log shippers)."
    metrics_loopback_open: bool = False
    "Serve /metrics without the token to clients on loopback (a local Prometheus)."
    webhook_secret: str | None = None
    "Standard Webhooks signing secret, `whsec_` + base64 (required for webhooks); see docs/operators.md."
    webhook_allow_private: bool = False
    "Allow webhook URLs on loopback, private or link-local addresses (receivers on this machine or LAN)."
    webhook_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    "Seconds a webhook receiver has to answer one delivery."
    webhook_retry_s: list[float] = msgspec.field(default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0])
    "Seconds before each retry of a failed webhook delivery; after the last, the delivery is dropped."

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()


class Loaded(msgspec.Struct, frozen=True, kw_only=True):
    """Settings plus where every value came from, and the raw sources for plugin settings."""

    settings: Settings
    sources: dict[str, str]
    config_file: str | None
    config: dict[str, Any]
    env: dict[str, str]

    def plugin(self, namespace: str, schema: type[T]) -> tuple[T, dict[str, str]]:
        """Build a plugin's settings Struct from the same sources, under ``namespace``."""
        table = self.config.get(namespace, {})
        if not isinstance(table, dict):
            raise SettingsError(f"config file: [{namespace}] must be a table")
        return _build(schema, table, self.env, {}, prefix=f"KIAPI_{_env_name(namespace)}_",
                      where=f"[{namespace}]")


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Loaded:
    """Resolve settings from all sources. ``env`` defaults to ``os.environ``.

    The config file is ``config_file``, else ``$KIAPI_CONFIG``, else the per-user default
    (``~/.config/kiapi/config.toml``) when it exists. Core settings live at its top level,
    plugin settings in a table named after the capability.
    """
    env = dict(os.environ if env is None else env)
    path = Path(config_file) if config_file else (Path(env["KIAPI_CONFIG"]) if env.get("KIAPI_CONFIG") else None)
    config: dict[str, Any] = {}
    if path is None and _default_config_file().is_file():
        path = _default_config_file()
    if path is not None:
        try:
            config = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise StartupError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise StartupError(f"config file {path} is not valid TOML: {exc}") from None
    core_table = {k: v for k, v in config.items() if not isinstance(v, dict)}
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    settings, sources = _build(Settings, core_table, env, flags, prefix="KIAPI_", where=str(path))
    if settings.auth_token is not None and not settings.auth_token.strip():
        raise SettingsError(f"KIAPI_AUTH_TOKEN (from {sources['auth_token']}) is blank; a blank token would "
                            "let `Authorization: Bearer` with nothing after it in. Set a real token or unset it")
    return Loaded(settings=settings, sources=sources, config_file=str(path) if path else None,
                  config=config, env=env)


def describe(schema: type) -> dict[str, str]:
    """Field name → the one-line documentation written under it in the Struct."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    try:
        tree = ast.parse(inspect.getsource(schema))
    except (OSError, TypeError):
        return docs
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = following.value.value
    return docs


def _env_name(namespace: str) -> str:
    return namespace.upper().replace("-", "_")


def _build(schema: type[T], table: Mapping[str, Any], env: Mapping[str, str], flags: Mapping[str, Any],
           *, prefix: str, where: str) -> tuple[T, dict[str, str]]:
    fields = {f.name: f for f in msgspec.structs.fields(schema)}  # type: ignore[arg-type]  # T: a Struct type
    values: dict[str, Any] = {}
    sources = {name: "default" for name in fields}
    unknown = [k for k in table if k not in fields]
    if unknown:
        raise SettingsError(f"config file {where}: unknown setting(s) {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(sorted(fields))}")
    for name, value in table.items():
        values[name] = value
        sources[name] = f"config file {where}"
    for name, field in fields.items():
        key = prefix + name.upper()
        if key in env:
            values[name] = _from_env(env[key], field.type)
            sources[name] = f"env {key}"
    for name, value in flags.items():
        if name in fields:
            values[name] = value
            sources[name] = "command line"
    try:
        return msgspec.convert(values, schema, strict=False), sources
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$.")
        name = path.rstrip("`").split(".")[0].split("[")[0]
        if name in fields:
            raise SettingsError(f"invalid setting {prefix}{name.upper()} = {values.get(name)!r} "
                               f"(from {sources[name]}): {message}") from None
        raise SettingsError(f"invalid setting: {exc}") from None


def _from_env(raw: str, annotation: Any) -> Any:
    """Environment values are strings; lists are comma-separated, empty means unset/empty."""
    text = str(annotation)
    if "list" in text:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if raw == "" and "None" in text:
        return None
    if "bool" in text:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
    return raw
