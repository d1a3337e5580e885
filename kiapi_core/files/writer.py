"""BlobWriter: an upload streamed to a temp file, then committed as a stored file."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import PayloadTooLarge
from .durability import unlink as _unlink
from .ingest import BLOCK_BYTES, BUFFERS, BlockSink, Chunk, take
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
        self._sink = BlockSink(self._tmp)
        self._done = False
        # Network chunks (up to 1 MiB from `kiapi serve`) are gathered, without copying, into
        # blocks of BLOCK_BYTES; worker threads hash each block and write it (.ingest) while
        # the next one is received: one thread hop per chunk capped uploads at ~300 MiB/s.
        self._chunks: list[Chunk] = []
        self._buffered = 0
        self._blocks = 0  # blocks handed to the sink so far
        self._filling: asyncio.Future[int] | None = None  # the last block's fill (copy + hash)
        self._writes: list[asyncio.Future[None] | None] = [None] * BUFFERS  # per buffer
        self._reserved = 0  # bytes counted against the store's quota so far

    async def __aenter__(self) -> BlobWriter:
        await asyncio.to_thread(self._sink.open)
        return self

    async def _send_block(self, chunks: list[Chunk]) -> None:
        """Hand one block to the worker threads: filled (and hashed) after the previous
        block's fill, written once its buffer's previous write has finished. An error of an
        earlier block (disk full ...) is raised here."""
        if self._filling is not None:
            await self._filling
        index = self._blocks % BUFFERS
        previous = self._writes[index]
        if previous is not None:
            await previous
        offset, self._blocks = self._blocks * BLOCK_BYTES, self._blocks + 1
        self._filling = fill = asyncio.ensure_future(asyncio.to_thread(self._sink.fill, index, chunks))
        self._writes[index] = asyncio.ensure_future(self._write_after(fill, index, offset))

    async def _write_after(self, fill: asyncio.Future[int], index: int, offset: int) -> None:
        length = await fill
        await asyncio.to_thread(self._sink.write, index, length, offset)

    async def _wait_all(self) -> None:
        """Wait for every fill and write in flight; the first error is raised."""
        pending = [f for f in (self._filling, *self._writes) if f is not None]
        self._filling, self._writes = None, [None] * BUFFERS
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _close_file(self) -> None:
        try:
            await self._wait_all()
        except Exception:  # aborting anyway; the file is removed
            pass
        finally:
            self._sink.close()  # idempotent; a close is one syscall

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
        self._chunks.append(data)
        self._buffered += len(data)
        try:
            while self._buffered >= BLOCK_BYTES:
                block, self._chunks = take(self._chunks, BLOCK_BYTES)
                self._buffered -= BLOCK_BYTES
                await self._send_block(block)
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
            # The last block is written alone: its unaligned tail takes the file out of O_DIRECT.
            await self._wait_all()
            if self._chunks:
                chunks, self._chunks, self._buffered = self._chunks, [], 0
                await self._send_block(chunks)
                await self._wait_all()
            await asyncio.to_thread(self._sink.finish)
            stored = await asyncio.to_thread(
                self._store._install, self._tmp, self.size, self._sink.hash.hexdigest(),
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


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"



__all__ = ["BlobWriter"]
