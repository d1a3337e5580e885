"""The Files store's records on disk: ids, sidecars, and how a file is published and removed.

A file exists once its sidecar ``<id>.json`` (a :class:`Sidecar`: the record plus the blob's
name) is renamed into place next to its complete blob; removing the sidecar makes it vanish at
once. :class:`SidecarFiles` holds these steps for :class:`~kiapi_core.files.store.FileStore`
(see that module for the layout and the guarantees).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from . import durability
from .durability import DeferredSyncs, RecentFiles
from .durability import unlink as _unlink
from .models import FileRecord, StoredFile
from .names import blob_name, check_id, clean_content_type, clean_filename, valid_id
from .quota import StorageQuota


class Sidecar(msgspec.Struct, kw_only=True):
    """What ``<id>.json`` holds. ``blob`` is the blob's file name, relative to the root."""

    v: int = 1
    blob: str
    record: FileRecord
    #: The record's ``expires_at`` was set for this file alone (per-call ``ttl_s``); otherwise
    #: it follows the store's current retention policy, also after a settings change.
    fixed: bool = False


sidecar_encoder = msgspec.json.Encoder()
sidecar_decoder = msgspec.json.Decoder(Sidecar)


class SidecarFiles:
    """Ids, sidecars, publishing and removing: the part of :class:`~.store.FileStore` that
    decides what exists on disk."""

    # set by FileStore.__init__ (declared here for the type checker)
    root: Path
    ttl_s: float
    output_ttl_s: float | None
    keep: Callable[[FileRecord], bool] | None
    quota: StorageQuota | None
    _partial: Path
    _lock: threading.Lock
    _last_us: int
    _pins: dict[str, int]
    _doomed: dict[str, Path]
    _recent: RecentFiles
    _deferred: DeferredSyncs
    on_publish: Callable[[StoredFile], None] | None

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

    # -- records: made, published, read and removed ------------------------------------

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
        expiry was set for this file alone (a per-call ``ttl_s``), so retention changes skip it.
        Then ``on_publish`` (a shared store keeping the file) runs; if it fails, the file is
        unpublished again (the caller removes the blob) and the error propagates."""
        blob = blob_name(record.file_id, record.filename)
        self._write_sidecar(blob, record, fixed=fixed)
        if not self._deferred.active:
            durability.fsync_dir(self.root)
        stored = StoredFile(record=record, path=self.root / blob)
        if self.on_publish is not None:
            try:
                self.on_publish(stored)
            except BaseException:
                _unlink(self.root / f"{record.file_id}.json")
                raise
        self._recent.add(stored, data)
        return stored

    def _write_sidecar(self, blob: str, record: FileRecord, *, fixed: bool) -> None:
        side_tmp = self._temp_path()
        try:
            with open(side_tmp, "xb") as fh:
                fh.write(sidecar_encoder.encode(Sidecar(blob=blob, record=record, fixed=fixed)))
            os.replace(side_tmp, self.root / f"{record.file_id}.json")
        except BaseException:
            _unlink(side_tmp)
            raise

    def put_copy(self, record: FileRecord, chunks: Iterable[bytes]) -> StoredFile:
        """Keep a local copy of a file stored elsewhere (the cache of a shared store): ``chunks``
        are its bytes, written to a temp file and checked against the record's size and SHA-256
        before the copy appears under the record's id. The record's expiry is kept as it is; the
        copy is not counted against the quota and not passed to ``on_publish`` (it exists
        already). Raises OSError (EIO) for bytes that do not match the record."""
        check_id(record.file_id)
        blob = blob_name(record.file_id, record.filename)
        tmp = self._temp_path()
        try:
            digest, size = hashlib.sha256(), 0
            with open(tmp, "xb") as fh:
                for chunk in chunks:
                    digest.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                durability.sync_data(fh.fileno())
            if size != record.size or (record.sha256 and digest.hexdigest() != record.sha256):
                raise OSError(errno.EIO, f"the bytes of {record.file_id} do not match its record "
                                         f"({size} bytes, {record.size} expected, or another SHA-256)")
            os.replace(tmp, self.root / blob)
        finally:
            _unlink(tmp)
        self._write_sidecar(blob, record, fixed=True)
        return StoredFile(record=record, path=self.root / blob)

    def _read_sidecar(self, path: Path, *, check_expiry: bool = True) -> Sidecar | None:
        try:
            sidecar = sidecar_decoder.decode(path.read_bytes())
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
        if not expired(record, now):
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


def expired(record: FileRecord, now: float) -> bool:
    return record.expires_at is not None and record.expires_at <= now


__all__ = ["Sidecar", "SidecarFiles", "expired", "sidecar_decoder", "sidecar_encoder"]
