"""The storage quota of the Files store (``KIAPI_MAX_STORAGE_GB``), and full disks.

Every byte the store keeps (uploads, URL and data-URL inputs, job artifacts, training
checkpoints) is counted: the total is measured once when the store opens and then kept up to
date as files are written and removed. A write that would pass the limit is refused with 507
``insufficient_storage`` naming the usage and how to free space, before the bytes reach the disk
(uploads: while streaming, or at once from ``Content-Length``). A full disk (``ENOSPC``,
``EDQUOT``) is the same 507, never a 500.

Unset, the limit is what the store holds plus 90% of the space free when it opens, so the server
never fills the disk it shares with the system and the model caches.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import InsufficientStorage

GB = 1e9
#: Share of the free disk space the store may take when KIAPI_MAX_STORAGE_GB is unset.
DEFAULT_FREE_SHARE = 0.9
_FULL_DISK = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class StorageQuota:
    """Bytes stored plus bytes being written, against a limit (thread-safe)."""

    def __init__(self, limit_bytes: int, used_bytes: int, *, configured: bool) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = used_bytes
        self.reserved_bytes = 0
        self.configured = configured
        self._lock = threading.Lock()

    @classmethod
    def for_root(cls, root: Path, limit_gb: float | None) -> StorageQuota:
        used = measure(root)
        if limit_gb is not None:
            return cls(int(limit_gb * GB), used, configured=True)
        free = shutil.disk_usage(root).free
        return cls(used + int(free * DEFAULT_FREE_SHARE), used, configured=False)

    def available_bytes(self) -> int:
        with self._lock:
            return self.limit_bytes - self.used_bytes - self.reserved_bytes

    def reserve(self, n: int, what: str = "this file") -> None:
        """Count ``n`` bytes about to be written; 507 when they would pass the limit."""
        with self._lock:
            if self.used_bytes + self.reserved_bytes + n > self.limit_bytes:
                raise self.full(what, n)
            self.reserved_bytes += n

    def release(self, n: int) -> None:
        """Bytes reserved but not kept (an aborted write)."""
        with self._lock:
            self.reserved_bytes = max(0, self.reserved_bytes - n)

    def commit(self, n: int) -> None:
        """Reserved bytes that are now a stored file."""
        with self._lock:
            self.reserved_bytes = max(0, self.reserved_bytes - n)
            self.used_bytes += n

    def removed(self, n: int) -> None:
        with self._lock:
            self.used_bytes = max(0, self.used_bytes - n)

    def source(self) -> str:
        """Where the limit comes from, for the 507's message."""
        return "KIAPI_MAX_STORAGE_GB" if self.configured else \
            "KIAPI_MAX_STORAGE_GB, unset: 90% of the disk space free at start-up"

    def full(self, what: str, n: int) -> InsufficientStorage:
        source = self.source()
        return InsufficientStorage(
            f"not enough storage for {what} ({_gb(n)}): stored files use {_gb(self.used_bytes)} of "
            f"{_gb(self.limit_bytes)} ({source}). Free space by deleting files you no longer need "
            "(GET /v1/files lists them, DELETE /v1/files/{file_id} removes one), let old files expire "
            "(KIAPI_FILE_TTL_S), or raise KIAPI_MAX_STORAGE_GB",
            used_bytes=self.used_bytes, limit_bytes=self.limit_bytes, needed_bytes=n)


@contextlib.contextmanager
def counted(quota: StorageQuota | None, size: int, what: str) -> Iterator[None]:
    """Count a write of ``size`` bytes against ``quota`` (when there is one): reserved before,
    kept when the block succeeds, given back when it fails; a full disk becomes 507."""
    if quota is not None:
        quota.reserve(size, what)
    try:
        yield
    except BaseException as exc:
        if quota is not None:
            quota.release(size)
        full = disk_full(exc, what) if isinstance(exc, OSError) else None
        if full is not None:
            raise full from None
        raise
    if quota is not None:
        quota.commit(size)


def disk_full(exc: OSError, what: str) -> InsufficientStorage | None:
    """The 507 for a write that failed because the disk (or the user's disk quota) is full."""
    if exc.errno not in _FULL_DISK:
        return None
    return InsufficientStorage(
        f"the disk holding the data directory is full; {what} could not be stored. Free disk space "
        "(delete files with DELETE /v1/files/{file_id}, or other data on that disk) and retry")


def measure(root: Path) -> int:
    """Bytes of the stored blobs under ``root`` (sidecars and temp files not included)."""
    total = 0
    with os.scandir(root) as entries:
        for entry in entries:
            try:
                if ".data" in entry.name and entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total


def _gb(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= 0.01 * GB else f"{n / 1e6:.2f} MB"
