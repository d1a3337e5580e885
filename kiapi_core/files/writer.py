"""BlobWriter: an upload streamed to a temp file, then committed as a stored file."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import PayloadTooLarge
from .durability import unlink as _unlink
from .ingest import Chunk, Ingest
from .models import StoredFile
from .quota import disk_full

if TYPE_CHECKING:
    from .store import FileStore


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
        self._tmp = store._temp_path()
        # Chunks (up to 1 MiB from `kiapi serve`) are copied into 8 MiB blocks that worker
        # threads hash and write while the next block fills (.ingest); one thread hop per
        # chunk capped uploads at ~300 MiB/s.
        self._ingest = Ingest(self._tmp)
        self._done = False
        self._reserved = 0  # bytes counted against the store's quota so far

    async def __aenter__(self) -> BlobWriter:
        await self._ingest.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._done:
            await self.abort()

    async def write(self, data: Chunk) -> None:
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
        try:
            await self._ingest.feed(data)
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
            sha256 = await self._ingest.finish()
            stored = await asyncio.to_thread(
                self._store._install, self._tmp, self.size, sha256,
                filename=filename, content_type=content_type, meta=meta, ttl_s=ttl_s)
        except BaseException as exc:
            await self._ingest.close()
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
        self._release()
        await self._ingest.close()
        await asyncio.to_thread(_unlink, self._tmp)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"



__all__ = ["BlobWriter"]
