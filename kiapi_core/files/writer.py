"""BlobWriter: an upload streamed to a temp file, then committed as a stored file."""

from __future__ import annotations

import asyncio
import builtins
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import PayloadTooLarge
from . import durability
from .durability import unlink as _unlink
from .models import StoredFile
from .quota import disk_full

if TYPE_CHECKING:
    from .store import FileStore

#: Bytes a BlobWriter gathers before handing them to a thread to hash and write.
_WRITE_BATCH = 4 * 1024 * 1024


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


def _flush_and_sync(fh: Any) -> None:
    """Make a written temp file durable, then close it."""
    fh.flush()
    durability.sync_data(fh.fileno())
    fh.close()


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"



__all__ = ["BlobWriter"]
