"""How stored files reach the disk, and the files kept in memory just after they are stored.

* :func:`sync_data` / :func:`fsync_dir`: one data sync per blob and one directory sync per
  file (or per batch) are all a file needs (docs/reliability.md, "Files on disk");
* :class:`DeferredSyncs`: a thread (the model worker) may publish files at once and sync them
  later, right after the job's answer;
* :class:`RecentFiles`: the records, and for small files the bytes, of the files this
  process stored last, so a sync answer needs no disk read and no thread hop.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from .models import StoredFile


def sync_data(fd: int) -> None:
    """Make a file's bytes durable (``fdatasync`` where it exists: the size is part of it)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def fsync_dir(path: Path) -> None:
    """Make the renames in ``path`` durable (a no-op where directories cannot be opened)."""
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


class DeferredSyncs:
    """Blobs whose data sync was put off, per thread: only a thread that called :meth:`defer`
    defers; every other thread syncs as it writes."""

    def __init__(self) -> None:
        self._local = threading.local()

    def defer(self) -> None:
        self._local.blobs = []

    @property
    def active(self) -> bool:
        return getattr(self._local, "blobs", None) is not None

    def sync_or_defer(self, blob: Path, fd: int | None = None) -> None:
        """Sync ``blob`` (through ``fd`` when open) now, or later if this thread defers."""
        if self.active:
            self._local.blobs.append(blob)
        elif fd is not None:
            sync_data(fd)
        else:
            _sync_path(blob)

    def flush(self, directory: Path) -> None:
        """Sync every blob put off by this thread (one data sync each), then ``directory``."""
        blobs = getattr(self._local, "blobs", None)
        if not blobs:
            return
        self._local.blobs = []
        for blob in blobs:
            try:
                _sync_path(blob)
            except FileNotFoundError:  # deleted meanwhile: nothing to keep
                continue
        fsync_dir(directory)


def _sync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        sync_data(fd)
    finally:
        os.close(fd)


class RecentFiles:
    """The last ``max_files`` files stored, with the bytes of those up to ``max_bytes``."""

    def __init__(self, max_files: int, max_bytes: int) -> None:
        self.max_files, self.max_bytes = max_files, max_bytes
        self._lock = threading.Lock()
        self._files: OrderedDict[str, tuple[StoredFile, bytes | None]] = OrderedDict()

    def add(self, stored: StoredFile, data: bytes | None) -> None:
        kept = data if data is not None and len(data) <= self.max_bytes else None
        with self._lock:
            self._files[stored.file_id] = (stored, kept)
            while len(self._files) > self.max_files:
                self._files.popitem(last=False)

    def get(self, file_id: str) -> tuple[StoredFile, bytes | None] | None:
        with self._lock:
            return self._files.get(file_id)

    def forget(self, file_id: str) -> None:
        with self._lock:
            self._files.pop(file_id, None)


def unlink(path: Path) -> None:
    """Remove ``path`` if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass



__all__ = ["DeferredSyncs", "RecentFiles", "fsync_dir", "sync_data", "unlink"]
