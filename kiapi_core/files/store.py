"""FileStore: the Files API's bytes and metadata on disk, safe against crashes and hostile names.

Layout under ``root`` (``<data_dir>/files``)::

    file_<32 hex>.json              the sidecar: the FileRecord plus the blob's name
    file_<32 hex>.data<.suffix>     the blob; keeps the filename's extension because some
                                    readers (``mx.load`` for LoRA adapters) infer the format
                                    from it
    .partial/                       temp files being written; never listed, swept when stale

A blob can never be mistaken for a sidecar: sidecars are exactly ``<id>.json`` and blobs
always carry ``.data`` right after the id (the earlier kiapi let an uploaded ``x.json``
overwrite its own sidecar). Every write goes to ``.partial/`` first and is moved into place
with ``os.replace``, the blob before the sidecar, so a file exists (is listed, can be fetched)
only once both are complete; a crash leaves at most an orphan blob or a temp file, which
:meth:`FileStore.sweep_expired` removes.

Ids are ``file_`` + 32 hex digits whose first 13 digits are the creation time in microseconds
(strictly increasing within a process), so sorting ids sorts by age and a paging cursor stays
valid after the file it names is deleted. Anything not matching the pattern is answered with
:class:`NotFound` before its text is ever used as a path.

The sync methods are for the model worker thread; the ``a*`` methods and :meth:`writer` are
for the event loop and never block it.

FileStore is the local :class:`~.blobstore.BlobStore`. The steps that decide what exists on
disk (ids, sidecars, publishing, removing, local copies of files kept elsewhere) are in
:mod:`.sidecars`; streamed uploads in :mod:`.writer`; the storage quota in :mod:`.quota`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import NotFound
from .durability import DeferredSyncs, RecentFiles
from .durability import unlink as _unlink
from .models import FileRecord, StoredFile
from .names import (
    ID_FORM,
    ID_PATTERN,
    blob_name,
    check_id,
    clean_content_type,
    clean_filename,
    suggest_extension,
    valid_id,
)
from .quota import StorageQuota, counted
from .sidecars import SidecarFiles, expired
from .writer import BlobWriter

_PARTIAL = ".partial"
_CHUNK = 1024 * 1024
#: Temp files and orphan blobs younger than this are left alone by the sweeper: they may
#: belong to a write that is still running.
STALE_AFTER_S = 3600.0
#: Records of the files stored last kept in memory (:meth:`FileStore.recent`).
RECENT_FILES = 64
#: Of those, the bytes of files up to this size stored with ``put_bytes`` (at most 16 MiB kept).
RECENT_BYTES_MAX = 256 * 1024


class FileStore(SidecarFiles):
    """Stored files under ``root``. ``ttl_s`` > 0 makes files expire that many seconds after
    they were stored (per-call ``ttl_s`` overrides it for one file); 0 keeps them until
    deleted. Job outputs (``meta.job_id``) follow ``output_ttl_s`` instead when given, and
    ``keep(record)`` returning true holds back the expiry of a file (an output whose job record
    is still kept). The policy is evaluated on every read and sweep, not stored, so a changed
    setting applies to files stored before (see :mod:`.retention`).

    This is the local :class:`~.blobstore.BlobStore`. ``on_publish(stored)`` runs for every new
    file (``put_bytes``, ``put_path``, a committed :meth:`writer`) once it exists on disk; when
    it raises, the file is removed again and the error propagates. A shared store uses it to
    keep each new file (:class:`~kiapi_core.cluster.pg.PgFileStore`, with this store as its
    local cache)."""

    def __init__(self, root: Path | str, *, ttl_s: float = 0, output_ttl_s: float | None = None,
                 keep: Callable[[FileRecord], bool] | None = None, quota: StorageQuota | None = None,
                 on_publish: Callable[[StoredFile], None] | None = None) -> None:
        self.root = Path(root).expanduser()
        self.ttl_s = float(ttl_s)
        self.output_ttl_s = None if output_ttl_s is None else float(output_ttl_s)
        self.keep = keep
        self._partial = self.root / _PARTIAL
        self._partial.mkdir(parents=True, exist_ok=True)
        #: The storage quota (KIAPI_MAX_STORAGE_GB); ``None``: unlimited (507 only on a full disk).
        self.quota = quota
        self.on_publish = on_publish
        self._lock = threading.Lock()
        self._last_us = 0
        # Files queued or running jobs read: deleting one hides it at once, but its blob stays
        # until the last job using it lets go (a DELETE must not break a job it already fed).
        self._pins: dict[str, int] = {}
        self._doomed: dict[str, Path] = {}
        # Files this process just stored (a sync job's artifact is served right after): their
        # records without a disk read or a thread hop. Only a hint; serving re-reads the sidecar.
        self._recent = RecentFiles(RECENT_FILES, RECENT_BYTES_MAX)
        self._deferred = DeferredSyncs()

    # -- sync API (worker thread) --------------------------------------------------------

    def put_bytes(self, data: bytes, *, filename: str, content_type: str | None = None,
                  meta: Mapping[str, Any] | None = None, ttl_s: float | None = None) -> StoredFile:
        """Store ``data`` atomically: the blob is written under its final name (invisible until
        its sidecar exists) and synced, then the sidecar publishes it (see :meth:`_publish`)."""
        with self._counted(len(data), filename):
            return self._put_bytes(data, filename=filename, content_type=content_type, meta=meta, ttl_s=ttl_s)

    def _put_bytes(self, data: bytes, *, filename: str, content_type: str | None,
                   meta: Mapping[str, Any] | None, ttl_s: float | None) -> StoredFile:
        record = self._new_record(len(data), hashlib.sha256(data).hexdigest(), filename=filename,
                                  content_type=content_type, meta=meta, ttl_s=ttl_s)
        blob = self.root / blob_name(record.file_id, record.filename)
        try:
            with open(blob, "xb") as fh:
                fh.write(data)
                fh.flush()
                self._deferred.sync_or_defer(blob, fh.fileno())
            return self._publish(record, data, fixed=ttl_s is not None)
        except BaseException:
            _unlink(blob)
            raise

    def put_path(self, path: Path | str, *, filename: str | None = None, content_type: str | None = None,
                 meta: Mapping[str, Any] | None = None, move: bool = True,
                 ttl_s: float | None = None) -> StoredFile:
        """Store the file at ``path``: moved when ``move`` and on the same filesystem (the
        usual case for a job's workdir under the data dir), copied otherwise."""
        path = Path(path)
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
            size = os.fstat(fh.fileno()).st_size
        with self._counted(size, filename or path.name):
            return self._put_path(path, size, digest.hexdigest(), filename=filename, content_type=content_type,
                                  meta=meta, move=move, ttl_s=ttl_s)

    def _put_path(self, path: Path, size: int, sha256: str, *, filename: str | None,
                  content_type: str | None, meta: Mapping[str, Any] | None, move: bool,
                  ttl_s: float | None) -> StoredFile:
        record = self._new_record(size, sha256, filename=filename or path.name,
                                  content_type=content_type, meta=meta, ttl_s=ttl_s)
        blob = self.root / blob_name(record.file_id, record.filename)
        try:
            moved = False
            if move:
                try:
                    os.rename(path, blob)  # one rename; the blob is invisible until its sidecar exists
                    moved = True
                except OSError:  # another filesystem: fall back to a copy
                    pass
            if not moved:
                shutil.copyfile(path, blob)
                if move:
                    _unlink(path)
            self._deferred.sync_or_defer(blob)  # the handler's writes are not on disk yet either way
            return self._publish(record, fixed=ttl_s is not None)
        except BaseException:
            _unlink(blob)
            raise

    def _counted(self, size: int, filename: str) -> contextlib.AbstractContextManager[None]:
        return counted(self.quota, size, f"file {clean_filename(filename)!r}")

    def get(self, file_id: str) -> StoredFile:
        """The stored file, or NotFound (also for malformed, expired or half-written ids)."""
        sidecar = self._read_sidecar(self._sidecar_path(file_id))
        if sidecar is None:
            raise NotFound(f"no file {file_id!r}; it was deleted, expired or never existed",
                           code="file_not_found")
        return StoredFile(record=sidecar.record, path=self.root / sidecar.blob)

    def recent(self, file_id: str) -> tuple[StoredFile, bytes | None] | None:
        """A file among the last :data:`RECENT_FILES` this process stored, from memory (safe on
        the event loop), with its bytes when ``put_bytes`` stored at most
        :data:`RECENT_BYTES_MAX`; ``None`` otherwise. A delete or expiry forgets it."""
        found = self._recent.get(file_id)
        return None if found is None or expired(found[0].record, time.time()) else found

    def exists(self, file_id: str) -> bool:
        try:
            self.get(file_id)
        except NotFound:
            return False
        return True

    def list(self, *, limit: int | None = None, after: str | None = None) -> builtins.list[FileRecord]:
        """Records newest first; ``after`` (a file id, which need not exist any more) starts
        the page just past it."""
        if after is not None:
            check_id(after)
        ids = sorted((name[:-5] for name in os.listdir(self.root)
                      if name.endswith(".json") and valid_id(name[:-5])), reverse=True)
        records: builtins.list[FileRecord] = []
        for file_id in ids:
            if after is not None and file_id >= after:
                continue
            sidecar = self._read_sidecar(self.root / f"{file_id}.json")
            if sidecar is not None:
                records.append(sidecar.record)
                if limit is not None and len(records) >= limit:
                    break
        return records

    def delete(self, file_id: str) -> None:
        """Remove a file (sidecar first, so it vanishes at once); NotFound if absent."""
        stored = self.get(file_id)
        self._remove(file_id, stored.path)

    def pin(self, file_ids: Iterable[str]) -> None:
        """Keep these files' bytes on disk while a job needs them, even if they are deleted."""
        with self._lock:
            for file_id in file_ids:
                self._pins[file_id] = self._pins.get(file_id, 0) + 1

    def pinned(self, file_id: str) -> bool:
        """Whether a queued or running job holds this file (:meth:`pin`)."""
        with self._lock:
            return file_id in self._pins

    def unpin(self, file_ids: Iterable[str]) -> None:
        """Release :meth:`pin`; a file deleted meanwhile loses its bytes now."""
        doomed: list[Path] = []
        with self._lock:
            for file_id in file_ids:
                left = self._pins.get(file_id, 0) - 1
                if left > 0:
                    self._pins[file_id] = left
                    continue
                self._pins.pop(file_id, None)
                if file_id in self._doomed:
                    doomed.append(self._doomed.pop(file_id))
        for blob in doomed:
            self._unlink_blob(blob)

    def sweep_expired(self, now: float | None = None) -> int:
        """Delete expired files, orphan blobs and stale temp files; returns files deleted."""
        now = time.time() if now is None else now
        removed = 0
        for entry in os.scandir(self.root):
            name = entry.name
            if name.endswith(".json") and valid_id(name[:-5]):
                sidecar = self._read_sidecar(Path(entry.path), check_expiry=False)
                if sidecar is not None and self._expired(sidecar.record, now):
                    self._remove(name[:-5], self.root / sidecar.blob)
                    removed += 1
            elif (".data" in name and valid_id(name.split(".", 1)[0]) and name.split(".", 1)[0] not in self._pins
                  and not (self.root / (name.split(".", 1)[0] + ".json")).exists() and _stale(entry, now)):
                self._unlink_blob(Path(entry.path))  # a crash between blob and sidecar
        for entry in os.scandir(self._partial):
            if _stale(entry, now):
                _unlink(Path(entry.path))
        return removed

    def defer_syncs(self) -> None:
        """Files the calling thread stores from now on are published at once and synced by
        :meth:`sync_deferred`, which the model worker calls right after each job's answer."""
        self._deferred.defer()

    def sync_deferred(self) -> None:
        """Sync what the calling thread stored since: a data sync per blob, one directory sync."""
        self._deferred.flush(self.root)

    # -- async API (event loop) ----------------------------------------------------------

    def writer(self, *, max_bytes: int | None = None, what: str = "file") -> BlobWriter:
        """``async with store.writer(max_bytes=...) as w: await w.write(...); await w.commit(...)``"""
        return BlobWriter(self, max_bytes=max_bytes, what=what)

    async def save_stream(self, chunks: AsyncIterator[bytes], *, filename: str,
                          content_type: str | None = None, max_bytes: int | None = None,
                          meta: Mapping[str, Any] | None = None, ttl_s: float | None = None) -> StoredFile:
        """Stream ``chunks`` to disk; 413 (and nothing stored) once ``max_bytes`` is passed."""
        async with self.writer(max_bytes=max_bytes) as w:
            async for chunk in chunks:
                await w.write(chunk)
            return await w.commit(filename=filename, content_type=content_type, meta=meta, ttl_s=ttl_s)

    async def aget(self, file_id: str) -> StoredFile:
        check_id(file_id)
        return await asyncio.to_thread(self.get, file_id)

    async def alist(self, *, limit: int | None = None,
                    after: str | None = None) -> builtins.list[FileRecord]:
        return await asyncio.to_thread(self.list, limit=limit, after=after)

    async def adelete(self, file_id: str) -> None:
        check_id(file_id)
        await asyncio.to_thread(self.delete, file_id)

    async def asweep_expired(self) -> int:
        return await asyncio.to_thread(self.sweep_expired)

    async def sweep_forever(self, interval_s: float = 300.0) -> None:
        """Run :meth:`sweep_expired` every ``interval_s`` (start as a task in the lifespan)."""
        while True:
            try:
                await self.asweep_expired()
            except OSError:  # a vanished file mid-sweep; the next round catches up
                pass
            await asyncio.sleep(interval_s)


def _stale(entry: os.DirEntry[str], now: float) -> bool:
    try:
        return now - entry.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False



__all__ = ["FileStore", "BlobWriter", "ID_PATTERN", "ID_FORM", "valid_id", "check_id",
           "clean_filename", "clean_content_type", "suggest_extension"]
