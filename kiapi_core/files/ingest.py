"""An upload's bytes on their way to disk: hashed and written in large aligned blocks.

:class:`Ingest` is what :class:`~.writer.BlobWriter` feeds network chunks to:

1. on the event loop, each chunk is copied into the current block, one of :data:`BUFFERS`
   page-aligned buffers of :data:`BLOCK_BYTES` (a memcpy, ~0.1 s per GiB; the chunk is then
   freed at once);
2. a full block is hashed by one worker thread (one ``sha256.update`` call, which releases
   the GIL; blocks are hashed in order) and, at the same time, written at its offset with
   ``pwrite`` by another (which releases the GIL too), while the loop fills the next buffer.

The worker threads hold the GIL only between those calls. (A memcpy holds the GIL wherever it
runs; done in a worker it measured no faster and made the loop wait for the GIL more often, so
the loop does it.)

On Linux the temp file is opened with ``O_DIRECT``: blocks go from the aligned buffer to the
disk without being copied into the page cache. Allocating fresh page-cache pages for a GiB of
new data cost 0.2–2.5 s of CPU on the benchmark machine, more than hashing it, and the final
data sync then has little left to flush. Where ``O_DIRECT`` is refused (tmpfs, some network
file systems) or does not exist (macOS), the same blocks go through the page cache.
Durability is unchanged: :meth:`Ingest.finish` syncs the file's data before the BlobWriter
publishes it (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from . import durability

#: Bytes per block handed to the worker threads (a multiple of the page size).
BLOCK_BYTES = 8 * 1024 * 1024
#: Buffers per upload: one filling on the loop while the other is hashed and written (a third
#: measured no faster, and each costs 8 MiB of memory per upload in flight).
BUFFERS = 2
#: ``O_DIRECT`` needs buffers, offsets and lengths aligned to the device's logical block size;
#: a page is a multiple of every common one.
_ALIGN = mmap.PAGESIZE

Chunk = bytes | bytearray | memoryview


class BlockFile:
    """The temp file and its buffers; the methods but :meth:`buffer` run in worker threads.

    Block ``n`` lives in buffer ``n % BUFFERS`` and is written at ``n * BLOCK_BYTES``. Every
    block but the last is exactly :data:`BLOCK_BYTES` long, so every write but the last is
    aligned; the last is written by :meth:`finish`, after all others have finished.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hash = hashlib.sha256()
        #: Whether writes currently bypass the page cache.
        self.direct = False
        self._fd = -1
        self._buffers: list[mmap.mmap] = []
        self._lock = threading.Lock()
        #: Worker calls in progress; ``close`` waits for them (a canceled upload's threads run on).
        self._using = threading.Condition(self._lock)
        self._in_flight = 0
        self._closed = False

    def open(self) -> None:
        """Create the file (it must not exist) and the buffers."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        o_direct = getattr(os, "O_DIRECT", 0)
        if o_direct:
            try:
                self._fd = os.open(self.path, flags | o_direct, 0o666)
                self.direct = True
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: this file system does not do O_DIRECT
                    raise
        if self._fd < 0:
            self._fd = os.open(self.path, flags, 0o666)
        # Anonymous maps are page-aligned, as O_DIRECT needs them.
        self._buffers = [mmap.mmap(-1, BLOCK_BYTES) for _ in range(BUFFERS)]

    def buffer(self, index: int) -> mmap.mmap:
        return self._buffers[index]

    @contextlib.contextmanager
    def _use(self) -> Iterator[None]:
        """One worker call on the file and buffers: refused once closed, waited for by close."""
        with self._using:
            if self._closed:
                raise OSError(errno.EBADF, "the upload was given up")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._using:
                self._in_flight -= 1
                self._using.notify_all()

    def hash_block(self, index: int, length: int) -> None:
        """Add the first ``length`` bytes of buffer ``index`` to the digest (in block order)."""
        with self._use(), memoryview(self._buffers[index]) as view, view[:length] as block:
            self.hash.update(block)

    def write_block(self, index: int, length: int, offset: int) -> None:
        """Write the first ``length`` bytes of buffer ``index`` at ``offset``."""
        with self._use(), memoryview(self._buffers[index]) as view:
            aligned = length - length % _ALIGN if self.direct else length
            self._pwrite(view[:aligned], offset)
            if aligned < length:  # the last block's tail; every other write has finished
                self._leave_direct()
                self._pwrite(view[aligned:length], offset + aligned)

    def finish(self, index: int, length: int, offset: int) -> None:
        """Hash and write the last block, sync the file's data (durable), close it."""
        with self._use():
            self.hash_block(index, length)
            self.write_block(index, length, offset)
            durability.sync_data(self._fd)
        self.close()

    def _pwrite(self, data: memoryview, offset: int) -> None:
        with data:
            while data:
                try:
                    written = os.pwrite(self._fd, data, offset)
                except OSError as exc:
                    # Some file systems accept O_DIRECT at open() and refuse it on write.
                    if exc.errno != errno.EINVAL or not self.direct:
                        raise
                    self._leave_direct()
                    continue
                data = data[written:]
                offset += written

    def _leave_direct(self) -> None:
        """Write through the page cache from now on."""
        import fcntl  # only where O_DIRECT exists (not Windows)

        with self._lock:
            if self.direct:
                flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                self.direct = False

    def close(self) -> None:
        """Close the file and free the buffers once no worker call uses them (idempotent; the
        file itself stays). Blocks: call it off the event loop."""
        with self._using:
            self._closed = True
            while self._in_flight:
                self._using.wait()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        buffers, self._buffers = self._buffers, []
        for buffer in buffers:
            buffer.close()


class Ingest:
    """The event loop's side: fills blocks from chunks and keeps the worker threads busy.

    ``await open()``, ``await feed(chunk)`` for each chunk, then ``await finish()`` (the
    SHA-256 hex digest, the file durable on disk) or ``await close()`` to give up. An error of
    an earlier block (disk full ...) is raised by a later ``feed`` or by ``finish``.
    """

    def __init__(self, path: Path) -> None:
        self.file = BlockFile(path)
        self._blocks = 0  # blocks handed to the workers
        self._filled = 0  # bytes in the block being filled
        self._hashing: asyncio.Future[None] | None = None  # the last block's hash
        self._busy: list[asyncio.Future[None] | None] = [None] * BUFFERS  # per buffer

    async def open(self) -> None:
        await asyncio.to_thread(self.file.open)

    async def feed(self, data: Chunk) -> None:
        view = memoryview(data)
        while view:
            index = self._blocks % BUFFERS
            if self._filled == 0:
                await self._free(index)
            take = min(len(view), BLOCK_BYTES - self._filled)
            self.file.buffer(index)[self._filled:self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == BLOCK_BYTES:
                self._launch(index)

    async def _free(self, index: int) -> None:
        busy, self._busy[index] = self._busy[index], None
        if busy is not None:
            await busy

    def _launch(self, index: int) -> None:
        """Hash (after the previous block's hash) and write the full block ``index``."""
        offset, self._blocks, self._filled = self._blocks * BLOCK_BYTES, self._blocks + 1, 0
        self._hashing = hashing = asyncio.ensure_future(self._hash_after(self._hashing, index))
        writing = asyncio.ensure_future(asyncio.to_thread(self.file.write_block, index, BLOCK_BYTES, offset))
        self._busy[index] = asyncio.ensure_future(_both(hashing, writing))

    async def _hash_after(self, previous: asyncio.Future[None] | None, index: int) -> None:
        if previous is not None:
            await previous
        await asyncio.to_thread(self.file.hash_block, index, BLOCK_BYTES)

    async def wait(self) -> None:
        """Wait for every block in flight; the first error is raised."""
        pending = [f for f in (self._hashing, *self._busy) if f is not None]
        self._hashing, self._busy = None, [None] * BUFFERS
        for result in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    async def finish(self) -> str:
        """Write the last block, sync the file's data and close it; the SHA-256 hex digest."""
        await self.wait()
        await asyncio.to_thread(self.file.finish, self._blocks % BUFFERS, self._filled,
                                self._blocks * BLOCK_BYTES)
        return self.file.hash.hexdigest()

    async def close(self) -> None:
        """Give up: wait for the workers (errors ignored), close the file (it stays on disk)."""
        try:
            await self.wait()
        except Exception:  # giving up anyway
            pass
        finally:
            # Shielded: a canceled caller must not stop the close (the fd and buffers would leak);
            # it waits for threads a canceled upload left writing, so no write outlives the fd.
            await asyncio.shield(asyncio.to_thread(self.file.close))


async def _both(first: asyncio.Future[None], second: asyncio.Future[None]) -> None:
    """Wait for both (the buffer is free only then); the first error is raised."""
    for result in await asyncio.gather(first, second, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


__all__ = ["BLOCK_BYTES", "BUFFERS", "BlockFile", "Chunk", "Ingest"]
