"""PgFileStore: the Files API with metadata and bytes in PostgreSQL, and a local cache.

File bytes live in ``kiapi_file_chunks`` (1 MiB rows), so a cluster needs no second service.
They are streamed in with ``COPY`` and out chunk by chunk, never whole in memory. A local
:class:`~kiapi_core.files.store.FileStore` under ``<data_dir>/files`` is the cache, used only
through its public API: every new file is stored there first and handed to the database by its
``on_publish`` hook, so handlers and downloads keep getting a local path; a file stored on
another host is copied into the cache (``put_copy``) the first time it is needed here. The
database decides what exists: a file deleted on another host answers 404 here at once, and its
cached copy goes at the next sweep (after the jobs that pinned it let go). The cache is kept
under ``KIAPI_CLUSTER_CACHE_GB`` as copies are added, least recently used first
(:class:`~kiapi_core.files.cache.CacheBound`); ``KIAPI_MAX_STORAGE_GB`` bounds the bytes in the
database (:mod:`.quota`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from ...errors import NotFound
from ...files.cache import CacheBound
from ...files.models import FileRecord, StoredFile
from ...files.names import check_id
from ...files.quota import StorageQuota
from ...files.store import STALE_AFTER_S, FileStore
from ...files.writer import BlobWriter
from .connect import Pool
from .pins import delete_unless_pinned, pinned
from .quota import DatabaseQuota, database_full

log = logging.getLogger("kiapi.cluster")
CHUNK = 1024 * 1024
_rec = msgspec.json.Decoder(FileRecord)
_enc = msgspec.json.Encoder()
_LIVE = "complete AND (expires_at IS NULL OR expires_at > %s)"


def _not_found(file_id: str) -> NotFound:
    return NotFound(f"no file {file_id!r}; it was deleted, expired or never existed", code="file_not_found")


class PgFileStore:
    """A :class:`~kiapi_core.files.blobstore.BlobStore` shared by the hosts of a cluster."""

    def __init__(self, root: Path | str, pool: Pool, *, ttl_s: float = 0, output_ttl_s: float | None = None,
                 cache_gb: float = 20.0, max_storage_gb: float | None = None) -> None:
        self.pool = pool
        self._db_quota = None if max_storage_gb is None else DatabaseQuota(pool, max_storage_gb)
        #: KIAPI_MAX_STORAGE_GB over the database's bytes; ``None``: the database's disk is the limit.
        self.quota: StorageQuota | None = self._db_quota
        #: This host's copies. It checks new files against the database quota's view before
        #: writing them (evicting a copy frees nothing: DatabaseQuota.removed is a no-op).
        # Job outputs expire with their job (KIAPI_JOB_TTL_S), as on one host; uploads after ttl_s.
        self.cache = FileStore(root, ttl_s=ttl_s, output_ttl_s=output_ttl_s, quota=self._db_quota,
                               on_publish=self._upload)
        self.root = self.cache.root
        #: KIAPI_CLUSTER_CACHE_GB: checked as copies are added, least recently used go first.
        self.cache_bound = CacheBound(self.cache, int(cache_gb * 2**30))

    # -- writes: into the cache, which hands every new file to _upload --------------------
    def put_bytes(self, data: bytes, *, filename: str, content_type: str | None = None,
                  meta: Mapping[str, Any] | None = None, ttl_s: float | None = None) -> StoredFile:
        return self.cache.put_bytes(data, filename=filename, content_type=content_type, meta=meta, ttl_s=ttl_s)

    def put_path(self, path: Path | str, *, filename: str | None = None, content_type: str | None = None,
                 meta: Mapping[str, Any] | None = None, move: bool = True,
                 ttl_s: float | None = None) -> StoredFile:
        return self.cache.put_path(path, filename=filename, content_type=content_type, meta=meta, move=move,
                                   ttl_s=ttl_s)

    def writer(self, *, max_bytes: int | None = None, what: str = "file") -> BlobWriter:
        return self.cache.writer(max_bytes=max_bytes, what=what)

    async def save_stream(self, chunks: AsyncIterator[bytes], *, filename: str,
                          content_type: str | None = None, max_bytes: int | None = None,
                          meta: Mapping[str, Any] | None = None, ttl_s: float | None = None) -> StoredFile:
        return await self.cache.save_stream(chunks, filename=filename, content_type=content_type,
                                            max_bytes=max_bytes, meta=meta, ttl_s=ttl_s)

    def defer_syncs(self) -> None:
        self.cache.defer_syncs()

    def sync_deferred(self) -> None:
        self.cache.sync_deferred()

    def _upload(self, stored: StoredFile) -> None:
        """``on_publish``: claim the file's space (quota) with its row marked incomplete, then
        copy the bytes in and mark it complete. Reads see only complete rows; a host that dies
        in between leaves an incomplete row, which the sweep removes once stale."""
        record = stored.record
        with self.pool.connection() as conn:
            try:  # inside the connection: the pool reads other OperationalErrors as an outage (503)
                with conn.transaction():
                    if self._db_quota is not None:
                        self._db_quota.claim(conn, record.size, f"file {record.filename!r}")
                    conn.execute("INSERT INTO kiapi_files (id, record, expires_at, complete) "
                                 "VALUES (%s, %s, %s, false)",
                                 (record.file_id, _enc.encode(record).decode(), record.expires_at))
                try:
                    with conn.transaction():
                        # one COPY statement per file: a large one may take longer than the
                        # pool's statement timeout, which is for short statements
                        conn.execute("SET LOCAL statement_timeout = 0")
                        self._copy_in(conn, stored)
                        conn.execute("UPDATE kiapi_files SET complete = true WHERE id = %s", (record.file_id,))
                except BaseException:
                    with contextlib.suppress(psycopg.Error):  # else the sweep removes it
                        conn.execute("DELETE FROM kiapi_files WHERE id = %s", (record.file_id,))
                    raise
            except psycopg.errors.DiskFull:
                raise database_full(f"file {record.filename!r}") from None
        self.cache_bound.added(record.size)

    @staticmethod
    def _copy_in(conn: psycopg.Connection, stored: StoredFile) -> None:
        with (conn.cursor() as cur, cur.copy("COPY kiapi_file_chunks (file_id, seq, data) FROM STDIN") as copy,
              open(stored.path, "rb") as fh):
            seq = 0
            while chunk := fh.read(CHUNK):
                copy.write_row((stored.file_id, seq, chunk))
                seq += 1

    # -- reads: the database says what exists; bytes come from the cache -------------------
    def _record(self, file_id: str, *, pinned_ok: bool = False) -> FileRecord | None:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT record::text FROM kiapi_files WHERE id = %s AND complete AND (expires_at IS NULL "
                               "OR expires_at > %s OR (%s AND " + pinned("kiapi_files.id") + "))",
                               (file_id, time.time(), pinned_ok)).fetchone()
        return None if row is None else _rec.decode(row[0])

    def get(self, file_id: str, *, pinned_ok: bool = False) -> StoredFile:
        """``pinned_ok``: a job's input, readable after a delete or its expiry while the job pins it."""
        record = self._record(check_id(file_id), pinned_ok=pinned_ok)
        if record is None:
            raise _not_found(file_id)
        try:
            stored = self.cache.get(file_id)
        except NotFound:
            return self._fetch(record)
        os.utime(stored.path)  # recently used: the cache keeps it longest
        return stored

    def _fetch(self, record: FileRecord) -> StoredFile:
        """Copy a file's bytes from the database into the cache, chunk by chunk."""
        try:
            with self.pool.connection() as conn:
                stored = self.cache.put_copy(record, _chunks(conn, record.file_id))
        except OSError:
            if self._record(record.file_id) is None:  # deleted while it was being copied
                raise _not_found(record.file_id) from None
            raise
        self.cache_bound.added(record.size)
        return stored

    def recent(self, file_id: str) -> tuple[StoredFile, bytes | None] | None:
        return self.cache.recent(file_id)

    def exists(self, file_id: str) -> bool:
        try:
            self.get(file_id)
        except NotFound:
            return False
        return True

    def list(self, *, limit: int | None = None, after: str | None = None) -> builtins.list[FileRecord]:
        if after is not None:
            check_id(after)
        sql = (f"SELECT record::text FROM kiapi_files WHERE {_LIVE}"
               + (" AND id < %s" if after is not None else "") + " ORDER BY id DESC"
               + (" LIMIT %s" if limit is not None else ""))
        args: list[Any] = [time.time()] + ([after] if after is not None else []) + ([limit] if limit is not None else [])
        with self.pool.connection() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [_rec.decode(r[0]) for r in rows]

    async def aget(self, file_id: str) -> StoredFile:
        check_id(file_id)
        return await asyncio.to_thread(self.get, file_id)

    async def alist(self, *, limit: int | None = None, after: str | None = None) -> builtins.list[FileRecord]:
        return await asyncio.to_thread(self.list, limit=limit, after=after)

    # -- removal ---------------------------------------------------------------------------
    def delete(self, file_id: str) -> None:
        check_id(file_id)
        with self.pool.connection() as conn, conn.transaction():
            found, freed = delete_unless_pinned(conn, file_id, time.time())  # a pinned input goes later
        if not found:
            raise _not_found(file_id)
        if freed is None:
            return
        if self._db_quota is not None:
            self._db_quota.freed(freed)
        self._drop_local(file_id)

    async def adelete(self, file_id: str) -> None:
        check_id(file_id)
        await asyncio.to_thread(self.delete, file_id)

    def _drop_local(self, file_id: str) -> None:
        """Remove this host's copy (kept on disk while a job here has it pinned)."""
        with contextlib.suppress(NotFound):
            self.cache.delete(file_id)

    def pin(self, file_ids: Iterable[str]) -> None:
        self.cache.pin(file_ids)

    def unpin(self, file_ids: Iterable[str]) -> None:
        self.cache.unpin(file_ids)

    def sweep_expired(self, now: float | None = None) -> int:
        """Delete expired files and stale incomplete rows from the database, drop local copies
        of files gone from it, trim the cache to its size, then sweep the cache's own leftovers."""
        now = time.time() if now is None else now
        with self.pool.connection() as conn:
            gone = conn.execute(
                "DELETE FROM kiapi_files WHERE (expires_at IS NOT NULL AND expires_at <= %s AND NOT "
                + pinned("kiapi_files.id") + ") OR (NOT complete AND (record->>'created_at')::float8 < %s) "
                "RETURNING id, complete", (now, now - STALE_AFTER_S)).fetchall()
            known = {r[0] for r in conn.execute("SELECT id FROM kiapi_files").fetchall()}
            if self._db_quota is not None:
                self._db_quota.refresh(conn)
        for file_id, _complete in gone:
            self._drop_local(file_id)
        self.cache_bound.trim(keep_only=known)  # also copies of files deleted on other hosts
        self.cache.sweep_expired(now)
        return sum(1 for _file_id, complete in gone if complete)

    async def asweep_expired(self) -> int:
        return await asyncio.to_thread(self.sweep_expired)


def _chunks(conn: psycopg.Connection, file_id: str) -> Iterator[bytes]:
    """A file's bytes from the database, one chunk (one row) at a time."""
    seq = 0
    while True:
        row = conn.execute("SELECT data FROM kiapi_file_chunks WHERE file_id = %s AND seq = %s",
                           (file_id, seq)).fetchone()
        if row is None:
            return
        yield row[0]
        seq += 1


__all__ = ["PgFileStore"]
