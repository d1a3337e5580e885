"""Building a host's cluster services from ``KIAPI_CLUSTER_URL`` (imports psycopg: only called
when the setting is present)."""

from __future__ import annotations

from typing import Any

from ..errors import StartupError
from ..files.blobstore import BlobStore
from ..jobs.services import JobServices


def cluster_services(host: Any) -> tuple[BlobStore, Any]:
    """``(files, jobs)`` for ``host``: a PostgreSQL-backed file store and job manager. Nothing
    connects before the host starts serving."""
    try:
        from .pg import PgEventBus, PgFileStore, PgJobBackend, PgWebhookStore, Pool
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise StartupError("KIAPI_CLUSTER_URL is set but the cluster extra is not installed: "
                           "pip install 'kiapi-core[cluster]'") from exc
    from .manager import ClusterJobManager

    settings = host.settings
    url = settings.cluster_url
    if not url.startswith(("postgresql://", "postgres://")):
        raise StartupError(f"KIAPI_CLUSTER_URL must be a postgresql:// URL, not {url.split(':', 1)[0]!r}")
    pool = Pool(url)
    data = settings.data_path
    files: BlobStore = PgFileStore(data / "files", pool, ttl_s=settings.file_ttl_s, output_ttl_s=settings.job_ttl_s,
                                   cache_gb=settings.cluster_cache_gb, max_storage_gb=settings.max_storage_gb)
    services = JobServices(files=files, models=host.models, plugin_settings=host.plugin_settings,
                           cache_dir=host.cache_dir, work_root=data / "work", demo=settings.demo)
    jobs = ClusterJobManager(settings=settings, backend=PgJobBackend(pool), bus=PgEventBus(url),
                             registry=host.registry, services=services)
    # Held past a whole attempt (connect + answer), so two senders do not send one delivery at
    # once; a sender that died holding it is replaced after that.
    jobs.webhook_store = PgWebhookStore(pool, claim_s=float(settings.webhook_timeout_s) * 2 + 5.0)
    return files, jobs


__all__ = ["cluster_services"]
