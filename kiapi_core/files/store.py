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
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from ..errors import NotFound, PayloadTooLarge
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
_WRITE_BATCH = 1024 * 1024
#: Temp files and orphan blobs younger than this are left alone by the sweeper: they may
#: belong to a write that is still running.
STALE_AFTER_S = 3600.0


class _Sidecar(msgspec.Struct, kw_only=True):
    """What ``<id>.json`` holds. ``blob`` is the blob's file name, relative to the root."""

    v: int = 1
    blob: str
    record: FileRecord


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
        # Network chunks (64 KiB from Hypercorn) are gathered into _WRITE_BATCH-sized batches;
        # each batch is hashed and written in a worker thread (hashlib releases the GIL) while
        # the next one is received. One thread hop per chunk capped uploads at ~300 MiB/s and
        # hashed on the event loop (bench/run.py, docs/performance.md).
        self._buf = bytearray()
        self._inflight: asyncio.Future[None] | None = None
        self._reserved = 0  # bytes counted against the store's quota so far

    async def __aenter__(self) -> BlobWriter:
        self._fh = await asyncio.to_thread(builtins.open, self._tmp, "xb")
        return self

    def _write_batch(self, data: bytearray) -> None:
        """Worker thread: one batch, hashed then written (batches never overlap)."""
        self._hash.update(data)
        self._fh.write(data)

    async def _drain(self) -> None:
        """Wait for the batch in flight; its error (disk full ...) is raised here."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    async def _send_batch(self) -> None:
        await self._drain()
        if self._buf:
            data, self._buf = self._buf, bytearray()
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self._write_batch, data))

    async def _close_file(self) -> None:
        try:
            await self._drain()
        except Exception:  # noqa: BLE001 - aborting anyway; the file is removed
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
        self._buf += data
        if len(self._buf) >= _WRITE_BATCH:
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
        self._buf = bytearray()
        self._release()
        await self._close_file()
        await asyncio.to_thread(_unlink, self._tmp)


class FileStore:
    """Stored files under ``root``. ``ttl_s`` > 0 makes new files expire after that many
    seconds (per-call ``ttl_s`` overrides it); 0 keeps them until deleted."""

    def __init__(self, root: Path | str, *, ttl_s: float = 0, quota: StorageQuota | None = None) -> None:
        self.root = Path(root).expanduser()
        self.ttl_s = float(ttl_s)
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
        """Store ``data`` atomically."""
        with self._counted(len(data), filename):
            return self._put_bytes(data, filename=filename, content_type=content_type, meta=meta, ttl_s=ttl_s)

    def _put_bytes(self, data: bytes, *, filename: str, content_type: str | None,
                   meta: Mapping[str, Any] | None, ttl_s: float | None) -> StoredFile:
        tmp = self._temp_path()
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            return self._install(tmp, len(data), hashlib.sha256(data).hexdigest(), filename=filename,
                                 content_type=content_type, meta=meta, ttl_s=ttl_s)
        finally:
            _unlink(tmp)

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
        size = path.stat().st_size
        tmp = self._temp_path()
        with self._counted(size, filename or path.name):
            return self._put_path(path, tmp, size, digest.hexdigest(), filename=filename, content_type=content_type,
                                  meta=meta, move=move, ttl_s=ttl_s)

    def _put_path(self, path: Path, tmp: Path, size: int, sha256: str, *, filename: str | None,
                  content_type: str | None, meta: Mapping[str, Any] | None, move: bool,
                  ttl_s: float | None) -> StoredFile:
        try:
            moved = False
            if move:
                try:
                    os.replace(path, tmp)
                    moved = True
                except OSError:  # another filesystem: fall back to a copy
                    pass
            if not moved:
                shutil.copyfile(path, tmp)
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                if move:
                    _unlink(path)
            return self._install(tmp, size, sha256, filename=filename or path.name,
                                 content_type=content_type, meta=meta, ttl_s=ttl_s)
        finally:
            _unlink(tmp)

    def _counted(self, size: int, filename: str) -> contextlib.AbstractContextManager[None]:
        return counted(self.quota, size, f"file {clean_filename(filename)!r}")

    def get(self, file_id: str) -> StoredFile:
        """The stored file, or NotFound (also for malformed, expired or half-written ids)."""
        sidecar = self._read_sidecar(self._sidecar_path(file_id))
        if sidecar is None:
            raise NotFound(f"no file {file_id!r}; it was deleted, expired or never existed",
                           code="file_not_found")
        return StoredFile(record=sidecar.record, path=self.root / sidecar.blob)

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
                if sidecar is not None and _expired(sidecar.record, now):
                    self._remove(name[:-5], self.root / sidecar.blob)
                    removed += 1
            elif (".data" in name and valid_id(name.split(".", 1)[0]) and name.split(".", 1)[0] not in self._pins
                  and not (self.root / (name.split(".", 1)[0] + ".json")).exists() and _stale(entry, now)):
                self._unlink_blob(Path(entry.path))  # a crash between blob and sidecar
        for entry in os.scandir(self._partial):
            if _stale(entry, now):
                _unlink(Path(entry.path))
        return removed

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
        """Move a complete temp file into place as a new file; the sidecar goes last."""
        file_id = self.new_id()
        name = clean_filename(filename)
        now = time.time()
        ttl = self.ttl_s if ttl_s is None else ttl_s
        record = FileRecord(
            file_id=file_id, filename=name, content_type=clean_content_type(content_type, name),
            size=size, created_at=now, meta=dict(meta or {}),
            expires_at=(now + ttl) if ttl > 0 else None, sha256=sha256)
        blob = blob_name(file_id, name)
        os.replace(tmp, self.root / blob)
        side_tmp = self._temp_path()
        try:
            with open(side_tmp, "xb") as fh:
                fh.write(_sidecar_encoder.encode(_Sidecar(blob=blob, record=record)))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(side_tmp, self.root / f"{file_id}.json")
        except BaseException:
            _unlink(side_tmp)
            _unlink(self.root / blob)
            raise
        _fsync_dir(self.root)
        return StoredFile(record=record, path=self.root / blob)

    def _read_sidecar(self, path: Path, *, check_expiry: bool = True) -> _Sidecar | None:
        try:
            sidecar = _sidecar_decoder.decode(path.read_bytes())
        except (FileNotFoundError, msgspec.DecodeError):
            return None
        if not valid_id(sidecar.record.file_id) or sidecar.blob != blob_name(
                sidecar.record.file_id, sidecar.record.filename):
            return None  # a sidecar that points anywhere but at its own blob is not trusted
        if check_expiry and _expired(sidecar.record, time.time()):
            return None
        if not (self.root / sidecar.blob).is_file():
            return None
        return sidecar

    def _remove(self, file_id: str, blob: Path) -> None:
        _unlink(self.root / f"{file_id}.json")
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
    os.fsync(fh.fileno())
    fh.close()


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    """Make the renames durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


__all__ = ["FileStore", "BlobWriter", "ID_PATTERN", "ID_FORM", "valid_id", "check_id",
           "clean_filename", "clean_content_type", "suggest_extension"]
