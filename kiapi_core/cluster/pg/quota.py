"""``KIAPI_MAX_STORAGE_GB`` in a cluster: the bytes of every host's files in PostgreSQL.

The limit is the cluster's, not a host's: the sum of the sizes of all files in ``kiapi_files``,
including those still being copied in (their row exists, marked incomplete, from the moment
their space is claimed). The binding check is :meth:`DatabaseQuota.claim`, made in the database
under an advisory lock when a file is stored, so two hosts storing at once cannot both pass the
limit. The 507 is the single-host one (same code, fields and hint).

Before that, the early refusals (an upload's ``Content-Length``, each streamed chunk, an
artifact before it is written) use a view of the sum kept on each host: re-read at every store,
delete and sweep here, and adjusted by what this host stores. Another host's delete is not in
the view until then, so a view may be too high: off the event loop a refusal is confirmed with
the database first; on the event loop (no queries there) a view older than
:data:`FRESH_S` refuses nothing but what is larger than the whole limit, and the binding check
decides.
"""

from __future__ import annotations

import asyncio
import time

import psycopg

from ...errors import InsufficientStorage
from ...files.quota import GB, StorageQuota
from .connect import Pool

#: Advisory lock serialising the quota check and the space claim of every host
#: (7312018 is the schema's).
QUOTA_LOCK = 7312019
#: Seconds a host's view of the total is trusted for refusals on the event loop.
FRESH_S = 5.0
_USED = "SELECT coalesce(sum((record->>'size')::bigint), 0) FROM kiapi_files"


class DatabaseQuota(StorageQuota):
    """A :class:`~kiapi_core.files.quota.StorageQuota` over the database's files. ``used_bytes``
    is the database's total when last read plus what this host stored since."""

    def __init__(self, pool: Pool, limit_gb: float) -> None:
        super().__init__(int(limit_gb * GB), 0, configured=True)
        self.pool = pool
        self._read_at = -FRESH_S  # monotonic time of the last read; never read yet

    def refresh(self, conn: psycopg.Connection | None = None) -> int:
        """Re-read the total from the database (on ``conn``, or a connection of the pool)."""
        if conn is None:
            with self.pool.connection() as own:
                return self.refresh(own)
        row = conn.execute(_USED).fetchone()
        used = int(row[0]) if row is not None else 0
        with self._lock:
            self.used_bytes, self._read_at = used, time.monotonic()
        return used

    def _fresh(self) -> bool:
        return time.monotonic() - self._read_at <= FRESH_S

    def available_bytes(self) -> int:
        if self._fresh():
            return super().available_bytes()
        with self._lock:  # the view may be too high (above): only what this host is writing counts
            return self.limit_bytes - self.reserved_bytes

    def reserve(self, n: int, what: str = "this file") -> None:
        try:
            super().reserve(n, what)
            return
        except InsufficientStorage:
            if _on_event_loop():
                if self._fresh() or n > self.limit_bytes:
                    raise
                with self._lock:
                    self.reserved_bytes += n  # the binding check (claim) decides
                return
        self.refresh()  # off the loop: confirm with the database
        super().reserve(n, what)

    def claim(self, conn: psycopg.Connection, size: int, what: str) -> None:
        """Inside ``conn``'s transaction, before the file's row is inserted: 507 when ``size`` more
        bytes would pass the limit. The lock is held until the transaction ends, so the next
        host's check sees this file's row."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (QUOTA_LOCK,))
        if self.refresh(conn) + size > self.limit_bytes:
            raise self.full(what, size)

    def removed(self, n: int) -> None:
        """A local copy was removed (evicted from the cache): the database still holds the bytes."""

    def freed(self, n: int) -> None:
        """A file was deleted from the database."""
        super().removed(n)

    def source(self) -> str:
        return "KIAPI_MAX_STORAGE_GB, over the files of every host in the cluster's database"


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def database_full(what: str) -> InsufficientStorage:
    """The 507 for a store that failed because the database's disk is full."""
    return InsufficientStorage(
        f"the cluster database's disk is full; {what} could not be stored. Free space (delete files "
        "with DELETE /v1/files/{file_id}, or grow the database's disk) and retry; KIAPI_MAX_STORAGE_GB "
        "keeps kiapi's files below a limit of your choosing")


__all__ = ["FRESH_S", "QUOTA_LOCK", "DatabaseQuota", "database_full"]
