"""PgFileStore: the Files API with metadata and bytes in PostgreSQL, and a local cache.

File bytes live in ``kiapi_file_chunks`` (1 MiB rows), so a cluster needs no second service.
They are streamed in with ``COPY`` and out chunk by chunk, never whole in memory. The local
:class:`~kiapi_core.files.store.FileStore` under ``<data_dir>/files`` is the cache: handlers
and downloads keep getting a local path; a file stored on another host is fetched into the
cache the first time it is needed here. The database decides what exists: a file deleted on
another host answers 404 here at once, and its cached copy goes at the next sweep (after the
jobs that pinned it let go). The cache is kept under ``KIAPI_CLUSTER_CACHE_GB``, least
recently used first.
"""

from __future__ import annotations

import builtins
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgspec

from ...errors import NotFound
from ...files.models import FileRecord, StoredFile
from ...files.names import blob_name, check_id
from ...files.store import FileStore
from .connect import Pool

log = logging.getLogger("kiapi.cluster")
CHUNK = 1024 * 1024
_rec = msgspec.json.Decoder(FileRecord)
_enc = msgspec.json.Encoder()


class PgFileStore(FileStore):
    def __init__(self, root: Path | str, pool: Pool, *, ttl_s: float = 0, cache_gb: float = 20.0) -> None:
        super().__init__(root, ttl_s=ttl_s)
        self.pool = pool
        self.cache_bytes = int(cache_gb * 2**30)

    # -- writes: local first (the cache), then the database in one transaction -----------
    def _publish(self, record: FileRecord, data: bytes | None = None, *, fixed: bool = False) -> StoredFile:
        """Every new file (upload, artifact, materialised input) ends here: published locally,
        then stored in the database; a failed database write removes the local copy."""
        stored = super()._publish(record, data, fixed=fixed)
        try:
            self._upload(stored)
        except BaseException:
            super()._remove(stored.file_id, stored.path)
            raise
        return stored

    def _upload(self, stored: StoredFile) -> None:
        record = stored.record
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("INSERT INTO kiapi_files (id, record, expires_at, complete) VALUES (%s, %s, %s, true)",
                         (record.file_id, _enc.encode(record).decode(), record.expires_at))
            with (conn.cursor() as cur, cur.copy("COPY kiapi_file_chunks (file_id, seq, data) FROM STDIN") as copy,
                  open(stored.path, "rb") as fh):
                seq = 0
                while chunk := fh.read(CHUNK):
                    copy.write_row((record.file_id, seq, chunk))
                    seq += 1

    # -- reads: the database says what exists; bytes come from the cache -------------------
    def _record(self, file_id: str) -> FileRecord | None:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT record::text FROM kiapi_files WHERE id = %s AND complete "
                               "AND (expires_at IS NULL OR expires_at > %s)", (file_id, time.time())).fetchone()
        return None if row is None else _rec.decode(row[0])

    def get(self, file_id: str) -> StoredFile:
        check_id(file_id)
        record = self._record(file_id)
        if record is None:
            raise NotFound(f"no file {file_id!r}; it was deleted, expired or never existed", code="file_not_found")
        try:
            stored = super().get(file_id)
            os.utime(stored.path)  # recently used: the cache keeps it longest
            return stored
        except NotFound:
            return self._fetch(record)

    def _fetch(self, record: FileRecord) -> StoredFile:
        """Copy a file's bytes from the database into the cache, chunk by chunk."""
        tmp = self._temp_path()
        try:
            with self.pool.connection() as conn, open(tmp, "xb") as fh:
                seq = 0
                while True:
                    row = conn.execute("SELECT data FROM kiapi_file_chunks WHERE file_id = %s AND seq = %s",
                                       (record.file_id, seq)).fetchone()
                    if row is None:
                        break
                    fh.write(row[0])
                    seq += 1
                fh.flush()
                os.fsync(fh.fileno())
            blob = blob_name(record.file_id, record.filename)
            os.replace(tmp, self.root / blob)
            self._write_sidecar(blob, record)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        return StoredFile(record=record, path=self.root / blob)

    def _write_sidecar(self, blob: str, record: FileRecord) -> None:
        from ...files.sidecars import Sidecar, sidecar_encoder  # the local store's own format

        side_tmp = self._temp_path()
        # fixed: the expiry is the database's, not recomputed from this host's retention settings
        side_tmp.write_bytes(sidecar_encoder.encode(Sidecar(blob=blob, record=record, fixed=True)))
        os.replace(side_tmp, self.root / f"{record.file_id}.json")

    def list(self, *, limit: int | None = None, after: str | None = None) -> builtins.list[FileRecord]:
        if after is not None:
            check_id(after)
        sql = ("SELECT record::text FROM kiapi_files WHERE complete AND (expires_at IS NULL OR expires_at > %s)"
               + (" AND id < %s" if after is not None else "") + " ORDER BY id DESC"
               + (" LIMIT %s" if limit is not None else ""))
        args: list[Any] = [time.time()] + ([after] if after is not None else []) + ([limit] if limit is not None else [])
        with self.pool.connection() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [_rec.decode(r[0]) for r in rows]

    def delete(self, file_id: str) -> None:
        check_id(file_id)
        with self.pool.connection() as conn:
            row = conn.execute("DELETE FROM kiapi_files WHERE id = %s RETURNING record::text", (file_id,)).fetchone()
        if row is None:
            raise NotFound(f"no file {file_id!r}; it was deleted, expired or never existed", code="file_not_found")
        self._drop_local(file_id)

    def _drop_local(self, file_id: str) -> None:
        try:
            stored = super().get(file_id)
        except NotFound:
            return
        self._remove(file_id, stored.path)

    def sweep_expired(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self.pool.connection() as conn:
            gone = [r[0] for r in conn.execute("DELETE FROM kiapi_files WHERE expires_at IS NOT NULL AND "
                                               "expires_at <= %s RETURNING id", (now,)).fetchall()]
            known = {r[0] for r in conn.execute("SELECT id FROM kiapi_files").fetchall()}
        for file_id in gone:
            self._drop_local(file_id)
        self._trim_cache(known)
        super().sweep_expired(now)
        return len(gone)

    def _trim_cache(self, known: set[str]) -> None:
        """Drop cached copies of files gone from the database, then the least recently used
        ones beyond the cache size (never those a running job pinned)."""
        cached: list[tuple[float, int, str, Path]] = []
        for entry in os.scandir(self.root):
            if not (entry.name.endswith(".json") and entry.name.startswith("file_")):
                continue
            file_id = entry.name[:-5]
            blobs = [p for p in self.root.glob(f"{file_id}.data*")]
            if not blobs or file_id in self._pins:
                continue
            if file_id not in known:
                self._remove(file_id, blobs[0])
                continue
            st = blobs[0].stat()
            cached.append((st.st_mtime, st.st_size, file_id, blobs[0]))
        total = sum(size for _, size, _, _ in cached)
        for _, size, file_id, blob in sorted(cached):
            if total <= self.cache_bytes:
                break
            self._remove(file_id, blob)  # the bytes stay in the database
            total -= size


__all__ = ["PgFileStore"]
