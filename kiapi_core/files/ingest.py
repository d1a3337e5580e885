"""An upload's bytes on their way to disk: hashed and written in large aligned blocks.

:class:`~.writer.BlobWriter` gathers network chunks on the event loop and hands them over
:data:`BLOCK_BYTES` at a time; a :class:`BlockSink` does the rest in worker threads:

1. ``fill``: the block's chunks are copied into one of two page-aligned buffers and hashed
   with one ``sha256.update`` call (hashlib releases the GIL for it). Fills run one at a
   time, in order, so the digest is the file's;
2. ``write``: the buffer is written at the block's offset with ``pwrite``; the write of one
   block overlaps the fill of the next.

On Linux the temp file is opened with ``O_DIRECT``: the blocks go from the aligned buffer to
the disk without being copied into the page cache. Allocating fresh page-cache pages for a
GiB of new data cost 0.2–2.5 s of CPU on the benchmark machine, more than hashing it, and the
final data sync then had nothing left to flush (docs/performance.md, "Uploads"). Where
``O_DIRECT`` is refused (tmpfs, some network file systems) or does not exist (macOS), the
same blocks are written through the page cache. Durability is unchanged: :meth:`finish`
syncs the file's data before the BlobWriter publishes it (docs/reliability.md).
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from . import durability

#: Bytes per block handed to the worker threads (a multiple of the page size).
BLOCK_BYTES = 8 * 1024 * 1024
#: ``O_DIRECT`` needs buffers, offsets and lengths aligned to the device's logical block size;
#: a page is a multiple of every common one.
_ALIGN = mmap.PAGESIZE
#: Buffers per sink: one being filled while the other is written.
BUFFERS = 2

Chunk = bytes | bytearray | memoryview


class BlockSink:
    """A temp file at ``path`` written block by block from worker threads.

    Block ``n`` is filled into buffer ``n % BUFFERS`` and written at ``n * BLOCK_BYTES``; every
    block but the last is exactly :data:`BLOCK_BYTES`. The caller (BlobWriter) runs one fill
    at a time, in block order, and does not refill a buffer before its write has finished.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hash = hashlib.sha256()
        #: Whether writes currently bypass the page cache.
        self.direct = False
        self._fd = -1
        self._buffers: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        """Worker thread: create the file (it must not exist) and the buffers."""
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
        # Anonymous maps are page-aligned, as O_DIRECT needs; touched pages only count once used.
        self._buffers = [mmap.mmap(-1, BLOCK_BYTES) for _ in range(BUFFERS)]

    def fill(self, index: int, chunks: Sequence[Chunk]) -> int:
        """Worker thread: copy ``chunks`` into buffer ``index``, hash them; the byte count."""
        buffer = self._buffers[index]
        at = 0
        for chunk in chunks:
            size = len(chunk)
            buffer[at:at + size] = chunk
            at += size
        with memoryview(buffer) as view, view[:at] as block:
            self.hash.update(block)
        return at

    def write(self, index: int, length: int, offset: int) -> None:
        """Worker thread: write the first ``length`` bytes of buffer ``index`` at ``offset``.

        Only the last block may have a length that is not a multiple of the page size; its
        write must come after every other write has finished (the file then leaves
        ``O_DIRECT`` for its unaligned tail)."""
        with memoryview(self._buffers[index]) as view:
            aligned = length - length % _ALIGN if self.direct else length
            self._pwrite(view[:aligned], offset)
            if aligned < length:
                self._leave_direct()
                self._pwrite(view[aligned:length], offset + aligned)

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

    def finish(self) -> None:
        """Worker thread: make the written file durable (one data sync), then close it."""
        durability.sync_data(self._fd)
        self.close()

    def close(self) -> None:
        """Close the file and free the buffers (idempotent; the file itself stays)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        buffers, self._buffers = self._buffers, []
        for buffer in buffers:
            try:
                buffer.close()
            except BufferError:  # a canceled upload's worker still holds it: freed with it
                pass


def take(chunks: list[Chunk], size: int) -> tuple[list[Chunk], list[Chunk]]:
    """``chunks`` split after exactly ``size`` bytes (a chunk cut in two without copying)."""
    head: list[Chunk] = []
    for index, chunk in enumerate(chunks):
        if len(chunk) >= size:
            if len(chunk) == size:
                return [*head, chunk], chunks[index + 1:]
            view = memoryview(chunk)
            return [*head, view[:size]], [view[size:], *chunks[index + 1:]]
        head.append(chunk)
        size -= len(chunk)
    return head, []


__all__ = ["BLOCK_BYTES", "BUFFERS", "BlockSink", "take"]
