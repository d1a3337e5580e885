"""BlobStore: the Files API's storage as everything else uses it (routes, FileRef resolution,
the job workers, retention), whatever holds the bytes.

Two implementations: :class:`~kiapi_core.files.store.FileStore` (local disk, the embedded
default) and :class:`~kiapi_core.cluster.pg.PgFileStore` (PostgreSQL, shared by the hosts of a
cluster, with a FileStore as each host's local cache). Handlers always get a
:class:`StoredFile` with a local ``path``. The contract suite (tests/test_cluster_files.py) runs
against both.

The sync methods block (disk or database): call them on the worker thread or through
``asyncio.to_thread``; the ``a*`` methods, :meth:`writer` and :meth:`save_stream` are for the
event loop.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from .models import FileRecord, StoredFile
from .quota import StorageQuota
from .writer import BlobWriter


class BlobStore(Protocol):
    #: Where the local copies live (the store itself, or the cache of a shared store).
    root: Path
    #: The storage quota (``KIAPI_MAX_STORAGE_GB``); ``None``: no limit but the disk's.
    quota: StorageQuota | None

    # -- writes ---------------------------------------------------------------------------
    def put_bytes(self, data: bytes, *, filename: str, content_type: str | None = None,
                  meta: Mapping[str, Any] | None = None, ttl_s: float | None = None) -> StoredFile: ...

    def put_path(self, path: Path | str, *, filename: str | None = None, content_type: str | None = None,
                 meta: Mapping[str, Any] | None = None, move: bool = True,
                 ttl_s: float | None = None) -> StoredFile: ...

    def writer(self, *, max_bytes: int | None = None, what: str = "file") -> BlobWriter: ...

    async def save_stream(self, chunks: AsyncIterator[bytes], *, filename: str,
                          content_type: str | None = None, max_bytes: int | None = None,
                          meta: Mapping[str, Any] | None = None, ttl_s: float | None = None) -> StoredFile: ...

    def defer_syncs(self) -> None: ...

    def sync_deferred(self) -> None: ...

    # -- reads ----------------------------------------------------------------------------
    def get(self, file_id: str) -> StoredFile: ...

    def recent(self, file_id: str) -> tuple[StoredFile, bytes | None] | None: ...

    def exists(self, file_id: str) -> bool: ...

    def list(self, *, limit: int | None = None, after: str | None = None) -> builtins.list[FileRecord]: ...

    async def aget(self, file_id: str) -> StoredFile: ...

    async def alist(self, *, limit: int | None = None, after: str | None = None) -> builtins.list[FileRecord]: ...

    # -- removal --------------------------------------------------------------------------
    def delete(self, file_id: str) -> None: ...

    async def adelete(self, file_id: str) -> None: ...

    def pin(self, file_ids: Iterable[str]) -> None: ...

    def unpin(self, file_ids: Iterable[str]) -> None: ...

    def sweep_expired(self, now: float | None = None) -> int: ...

    async def asweep_expired(self) -> int: ...


__all__ = ["BlobStore"]
