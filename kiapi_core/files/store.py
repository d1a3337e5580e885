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
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from ..errors import NotFound, PayloadTooLarge
from . import durability
from .durability import DeferredSyncs, RecentFiles
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
from .quota import StorageQuota, counted, disk_full

_PARTIAL = ".partial"
_CHUNK = 1024 * 1024
#: Bytes a BlobWriter gathers before handing them to a thread to hash and write.
_WRITE_BATCH = 4 * 1024 * 1024
#: Temp files and orphan blobs younger than this are left alone by the sweeper: they may
#: belong to a write that is still running.
STALE_AFTER_S = 3600.0
#: Records of the files stored last kept in memory (:meth:`FileStore.recent`).
RECENT_FILES = 64
#: Of those, the bytes of files up to this size stored with ``put_bytes`` (at most 16 MiB kept).
RECENT_BYTES_MAX = 256 * 1024


class _Sidecar(msgspec.Struct, kw_only=True):
    """What ``<id>.json`` holds. ``blob`` is the blob's file name, relative to the root."""

    v: int = 1
    blob: str
    record: FileRecord
    #: The record's ``expires_at`` was set for this file alone (per-call ``ttl_s``); otherwise
    #: it follows the store's current retention policy, also after a settings change.
    fixed: bool = False


_sidecar_encoder = msgspec.json.Encoder()
_sidecar_decoder = msgspec.json.Decoder(_Sidecar)


class BlobWriter:
    """An upload in progress: bytes go to a temp file in ``.partial/``; :meth:`commit` makes
    it a stored file, :meth:`abort` (or leaving ``async with`` without committing) removes it.

    Passing ``max_bytes`` raises :class:`PayloadTooLarge` on the first write that crosses it,
    after removing the temp file, so an oversize upload never lands on disk whole.
    """

    def __init__(self, store: FileStore, *, max_bytes: int | None, what: str = "file") -> None:
        self._store = store
        self._max = max_bytes
        self._what = what
        self.size = 0
        self._hash = hashlib.sha256()
        self._tmp = store._temp_path()
        self._fh: Any = None
        self._done = False
        # Network chunks (up to 1 MiB from `kiapi serve`) are gathered, without copying, into
        # _WRITE_BATCH-sized batches; each batch is hashed and written in one pass by a worker
        # thread (hashlib and write release the GIL) while the next one is received. One thread
        # hop per chunk capped uploads at ~300 MiB/s and hashed on the event loop
        # (bench/run.py, docs/performance.md).
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._inflight: asyncio.Future[None] | None = None
        self._reserved = 0  # bytes counted against the store's quota so far

    async def __aenter__(self) -> BlobWriter:
        self._fh = await asyncio.to_thread(builtins.open, self._tmp, "xb")
        return self

    def _write_batch(self, chunks: list[bytes]) -> None:
        """Worker thread: one batch, each chunk hashed then written (batches never overlap)."""
        for chunk in chunks:
            self._hash.update(chunk)
            self._fh.write(chunk)

    async def _drain(self) -> None:
        """Wait for the batch in flight; its error (disk full ...) is raised here."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    async def _send_batch(self) -> None:
        await self._drain()
        if self._chunks:
            chunks, self._chunks, self._buffered = self._chunks, [], 0
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self._write_batch, chunks))

    async def _close_file(self) -> None:
        try:
            await self._drain()
        except Exception:  # aborting anyway; the file is removed
            pass
        finally:
            if self._fh is not None:
                self._fh.close()  # idempotent; a close is one syscall

    async def __aexit__(self, *exc: object) -> None:
        if not self._done:
            await self.abort()

    async def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("write after commit/abort")
        self.size += len(data)
        if self._max is not None and self.size > self._max:
            await self.abort()
            raise PayloadTooLarge(
                f"{self._what} is larger than the limit of {_mib(self._max)}",
                limit_bytes=self._max)
        if self._store.quota is not None:
            try:
                self._store.quota.reserve(len(data), f"this {self._what}")
            except BaseException:
                self.size -= len(data)
                await self.abort()
                raise
            self._reserved += len(data)
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= _WRITE_BATCH:
            try:
                await self._send_batch()
            except OSError as exc:
                await self.abort()
                full = disk_full(exc, f"this {self._what}")
                if full is None:
                    raise
                raise full from None

    async def commit(self, *, filename: str, content_type: str | None = None,
                     meta: Mapping[str, Any] | None = None, ttl_s: float | None = None) -> StoredFile:
        self._done = True
        try:
            await self._send_batch()
            await self._drain()
            await asyncio.to_thread(_flush_and_sync, self._fh)
            stored = await asyncio.to_thread(
                self._store._install, self._tmp, self.size, self._hash.hexdigest(),
                filename=filename, content_type=content_type, meta=meta, ttl_s=ttl_s)
        except BaseException as exc:
            await self._close_file()
            await asyncio.to_thread(_unlink, self._tmp)
            self._release()
            full = disk_full(exc, f"this {self._what}") if isinstance(exc, OSError) else None
            if full is not None:
                raise full from None
            raise
        if self._store.quota is not None:
            self._store.quota.commit(self._reserved)
            self._reserved = 0
        return stored

    def _release(self) -> None:
        if self._store.quota is not None and self._reserved:
            self._store.quota.release(self._reserved)
        self._reserved = 0

    async def abort(self) -> None:
        self._done = True
        self._chunks, self._buffered = [], 0
        self._release()
        await self._close_file()
        await asyncio.to_thread(_unlink, self._tmp)


class FileStore:
    """Stored files under ``root``. ``ttl_s`` > 0 makes files expire that many seconds after
    they were stored (per-call ``ttl_s`` overrides it for one file); 0 keeps them until
    deleted. Job outputs (``meta.job_id``) follow ``output_ttl_s`` instead when given, and
    ``keep(record)`` returning true holds back the expiry of a file (an output whose job record
    is still kept). The policy is evaluated on every read and sweep, not stored, so a changed
    setting applies to files stored before (see :mod:`.retention`)."""

    def __init__(self, root: Path | str, *, ttl_s: float = 0, output_ttl_s: float | None = None,
                 keep: Callable[[FileRecord], bool] | None = None, quota: StorageQuota | None = None) -> None:
        self.root = Path(root).expanduser()
        self.ttl_s = float(ttl_s)
        self.output_ttl_s = None if output_ttl_s is None else float(output_ttl_s)
        self.keep = keep
        self._partial = self.root / _PARTIAL
        self._partial.mkdir(parents=True, exist_ok=True)
        #: The storage quota (KIAPI_MAX_STORAGE_GB); ``None``: unlimited (507 only on a full disk).
        self.quota = quota
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

    # -- ids and paths -------------------------------------------------------------------

    def new_id(self) -> str:
        """A fresh id: 13 hex digits of microseconds (strictly increasing here) + 19 random."""
        with self._lock:
            now = max(time.time_ns() // 1000, self._last_us + 1)
            self._last_us = now
        return f"file_{now:013x}{secrets.token_hex(10)[:19]}"

    def _sidecar_path(self, file_id: str) -> Path:
        return self.root / f"{check_id(file_id)}.json"

    def _temp_path(self) -> Path:
        return self._partial / f"{secrets.token_hex(16)}.tmp"

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
        return None if found is None or _expired(found[0].record, time.time()) else found

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

    # -- internals -----------------------------------------------------------------------

    def _install(self, tmp: Path, size: int, sha256: str, *, filename: str | None,
                 content_type: str | None, meta: Mapping[str, Any] | None,
                 ttl_s: float | None) -> StoredFile:
        """Move a complete, synced temp file into place as a new file, then publish it."""
        record = self._new_record(size, sha256, filename=filename, content_type=content_type,
                                  meta=meta, ttl_s=ttl_s)
        blob = self.root / blob_name(record.file_id, record.filename)
        os.replace(tmp, blob)
        try:
            return self._publish(record, fixed=ttl_s is not None)
        except BaseException:
            _unlink(blob)
            raise

    def _new_record(self, size: int, sha256: str, *, filename: str | None, content_type: str | None,
                    meta: Mapping[str, Any] | None, ttl_s: float | None) -> FileRecord:
        file_id = self.new_id()
        name = clean_filename(filename)
        now = time.time()
        record = FileRecord(
            file_id=file_id, filename=name, content_type=clean_content_type(content_type, name),
            size=size, created_at=now, meta=dict(meta or {}), sha256=sha256)
        record.expires_at = self._policy_expiry(record) if ttl_s is None else (
            (now + ttl_s) if ttl_s > 0 else None)
        return record

    def _publish(self, record: FileRecord, data: bytes | None = None, *, fixed: bool = False) -> StoredFile:
        """Make a file whose blob is in place exist: write its sidecar and rename it in (the one
        step that publishes), then sync the directory. The sidecar itself is not synced; see
        docs/reliability.md ("Files on disk") and :mod:`.durability`. ``fixed``: the record's
        expiry was set for this file alone (a per-call ``ttl_s``), so retention changes skip it."""
        blob = blob_name(record.file_id, record.filename)
        side_tmp = self._temp_path()
        try:
            with open(side_tmp, "xb") as fh:
                fh.write(_sidecar_encoder.encode(_Sidecar(blob=blob, record=record, fixed=fixed)))
            os.replace(side_tmp, self.root / f"{record.file_id}.json")
        except BaseException:
            _unlink(side_tmp)
            raise
        if not self._deferred.active:
            durability.fsync_dir(self.root)
        stored = StoredFile(record=record, path=self.root / blob)
        self._recent.add(stored, data)
        return stored

    def _read_sidecar(self, path: Path, *, check_expiry: bool = True) -> _Sidecar | None:
        try:
            sidecar = _sidecar_decoder.decode(path.read_bytes())
        except (FileNotFoundError, msgspec.DecodeError):
            return None
        if not valid_id(sidecar.record.file_id) or sidecar.blob != blob_name(
                sidecar.record.file_id, sidecar.record.filename):
            return None  # a sidecar that points anywhere but at its own blob is not trusted
        if not sidecar.fixed:
            sidecar.record.expires_at = self._policy_expiry(sidecar.record)
        if check_expiry and self._expired(sidecar.record, time.time()):
            return None
        try:
            blob = os.stat(self.root / sidecar.blob)
        except OSError:
            return None
        if not stat.S_ISREG(blob.st_mode) or blob.st_size != sidecar.record.size:
            return None  # missing, or not the bytes the record describes (cut off by a crash)
        return sidecar

    def _policy_expiry(self, record: FileRecord) -> float | None:
        """When the retention policy ends ``record``: uploads and inputs after ``ttl_s``,
        outputs after ``output_ttl_s`` (``ttl_s`` if unset); ``None`` for 0."""
        ttl = self.output_ttl_s if record.meta.get("job_id") and self.output_ttl_s is not None else self.ttl_s
        return record.created_at + ttl if ttl > 0 else None

    def _expired(self, record: FileRecord, now: float) -> bool:
        """Past its expiry, and not held back by ``keep`` (an output of a kept job)."""
        if not _expired(record, now):
            return False
        return self.keep is None or not self.keep(record)

    def _remove(self, file_id: str, blob: Path) -> None:
        _unlink(self.root / f"{file_id}.json")
        self._recent.forget(file_id)
        with self._lock:
            if self._pins.get(file_id):
                self._doomed[file_id] = blob  # unpin removes it
                return
        self._unlink_blob(blob)

    def _unlink_blob(self, blob: Path) -> None:
        """Remove a stored blob, giving its bytes back to the quota."""
        try:
            size = blob.stat().st_size
            os.unlink(blob)
        except FileNotFoundError:
            return
        if self.quota is not None:
            self.quota.removed(size)


def _expired(record: FileRecord, now: float) -> bool:
    return record.expires_at is not None and record.expires_at <= now


def _stale(entry: os.DirEntry[str], now: float) -> bool:
    try:
        return now - entry.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False


def _flush_and_sync(fh: Any) -> None:
    """Make a written temp file durable, then close it."""
    fh.flush()
    durability.sync_data(fh.fileno())
    fh.close()


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


__all__ = ["FileStore", "BlobWriter", "ID_PATTERN", "ID_FORM", "valid_id", "check_id",
           "clean_filename", "clean_content_type", "suggest_extension"]
