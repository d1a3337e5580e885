"""PostgreSQL implementations of the cluster interfaces (needs ``kiapi-core[cluster]``)."""

from .bus import PgEventBus
from .connect import Pool, connect_pool
from .files import PgFileStore
from .jobs import PgJobBackend
from .webhooks import PgWebhookStore

__all__ = ["PgEventBus", "PgFileStore", "PgJobBackend", "PgWebhookStore", "Pool", "connect_pool"]
