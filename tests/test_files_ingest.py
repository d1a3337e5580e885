"""Uploads written in aligned blocks (kiapi_core/files/ingest.py) and kiapi serve's read path.

The bytes and the SHA-256 a BlobWriter stores must be exactly what was sent, whatever the
chunk sizes and wherever the block boundaries fall; a file system that refuses ``O_DIRECT``
(at open or at the first write) still gets the file, through the page cache.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import random

import h11
import pytest

from kiapi_core import serve
from kiapi_core.files import ingest
from kiapi_core.files.store import FileStore

SMALL_BLOCK = 64 * 1024


def _chunks(data: bytes, rng: random.Random) -> list[bytes | memoryview]:
    """``data`` cut at random places, some pieces as memoryviews (multipart sends views)."""
    out: list[bytes | memoryview] = []
    at = 0
    while at < len(data):
        size = rng.choice((1, 7, 4096, 65535, 65536, 100_000, 300_001))
        piece = data[at:at + size]
        out.append(memoryview(piece) if rng.random() < 0.3 else piece)
        at += size
    return out


async def _store(store: FileStore, chunks: list[bytes | memoryview]) -> tuple[bytes, str, bool]:
    async with store.writer() as writer:
        for chunk in chunks:
            await writer.write(chunk)
        direct_at_end = writer._ingest.file.direct
        stored = await writer.commit(filename="x.bin")
    return stored.path.read_bytes(), stored.record.sha256 or "", direct_at_end


@pytest.mark.parametrize("size", [0, 1, 4095, SMALL_BLOCK - 1, SMALL_BLOCK, SMALL_BLOCK + 1,
                                  3 * SMALL_BLOCK, 7 * SMALL_BLOCK + 12_345])
async def test_blocks_store_exactly_the_bytes_sent(tmp_path, monkeypatch, size):
    monkeypatch.setattr(ingest, "BLOCK_BYTES", SMALL_BLOCK)  # many blocks, every buffer reused
    rng = random.Random(size)
    data = rng.randbytes(size)
    stored, sha256, _ = await _store(FileStore(tmp_path), _chunks(data, rng))
    assert stored == data
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert os.listdir(tmp_path / ".partial") == []


async def test_real_block_size_with_an_unaligned_tail(tmp_path):
    data = os.urandom(2 * ingest.BLOCK_BYTES + 5000)
    chunks = [data[i:i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024)]
    stored, sha256, _ = await _store(FileStore(tmp_path), chunks)
    assert stored == data and sha256 == hashlib.sha256(data).hexdigest()


async def test_o_direct_refused_at_open_writes_through_the_page_cache(tmp_path, monkeypatch):
    real_open = os.open
    o_direct = getattr(os, "O_DIRECT", 0)
    refused: list[int] = []

    def no_direct(path, flags, mode=0o777, **kwargs):
        if o_direct and flags & o_direct:
            refused.append(flags)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", no_direct)
    monkeypatch.setattr(ingest, "BLOCK_BYTES", SMALL_BLOCK)
    data = os.urandom(5 * SMALL_BLOCK + 3)
    stored, sha256, direct = await _store(FileStore(tmp_path), [data])
    assert stored == data and sha256 == hashlib.sha256(data).hexdigest()
    assert not direct
    assert len(refused) == (1 if o_direct else 0)  # tried once, then the plain open


async def test_o_direct_refused_on_write_falls_back_for_the_rest(tmp_path, monkeypatch):
    """Some file systems take O_DIRECT at open() and refuse it on write (EINVAL): the file
    leaves O_DIRECT once and the upload goes on through the page cache."""
    real_open, real_pwrite = ingest.BlockFile.open, os.pwrite
    calls: list[int] = []
    ours: set[int] = set()  # os.pwrite is patched process-wide: count only this upload's file

    def opened_direct(self):
        real_open(self)
        ours.add(self._fd)
        self.direct = hasattr(os, "O_DIRECT")  # as if the file system had taken it

    def refuse_first(fd, data, offset):
        if fd not in ours:
            return real_pwrite(fd, data, offset)
        calls.append(offset)
        if len(calls) == 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(ingest.BlockFile, "open", opened_direct)
    monkeypatch.setattr(os, "pwrite", refuse_first)
    monkeypatch.setattr(ingest, "BLOCK_BYTES", SMALL_BLOCK)
    data = os.urandom(4 * SMALL_BLOCK + 10)
    chunks = [data[at:at + 10_000] for at in range(0, len(data), 10_000)]
    if not hasattr(os, "O_DIRECT"):  # no O_DIRECT (macOS): an EINVAL is a real error
        with pytest.raises(OSError, match="Invalid argument"):
            await _store(FileStore(tmp_path), chunks)
        return
    stored, sha256, direct = await _store(FileStore(tmp_path), chunks)
    assert stored == data and sha256 == hashlib.sha256(data).hexdigest()
    assert not direct
    # The refused block was written again at the same offset (two blocks may be in flight at
    # once, so the retry need not be the very next write).
    assert calls[0] == 0 and calls.count(0) == 2, calls


def _takes_o_direct(directory) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(directory / "probe")
    return True


async def test_o_direct_is_used_where_the_file_system_takes_it(tmp_path):
    """On Linux's usual file systems (ext4, xfs, btrfs) the temp file bypasses the page cache."""
    store = FileStore(tmp_path)
    async with store.writer() as writer:
        assert writer._ingest.file.direct == _takes_o_direct(tmp_path)
        await writer.write(b"abc")
        await writer.abort()
    assert os.listdir(tmp_path / ".partial") == []


async def test_a_failed_block_write_fails_the_upload_and_leaves_nothing(tmp_path, monkeypatch):
    def broken(self, index, length, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ingest.BlockFile, "write_block", broken)
    monkeypatch.setattr(ingest, "BLOCK_BYTES", SMALL_BLOCK)
    store = FileStore(tmp_path)
    with pytest.raises(OSError, match="Input/output"):
        async with store.writer() as writer:
            for _ in range(10):
                await writer.write(os.urandom(SMALL_BLOCK))
            await writer.commit(filename="x.bin")
    assert os.listdir(tmp_path / ".partial") == []
    assert store.list() == []


async def test_serve_reads_a_megabyte_per_recv_once_a_body_streams():
    """kiapi serve's start_server keeps asyncio's 256 KiB reads for small requests and moves
    a connection to READ_SIZE reads once a read comes back full (a large body streaming)."""
    sizes: list[int] = []

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int((await reader.readline()).decode())
        while size > 0:
            size -= len(await reader.read(serve.READ_SIZE))
        sizes.append(writer.transport.max_size)  # type: ignore[attr-defined]
        writer.close()

    server = await serve._StreamLimit(asyncio).start_server(connected, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for body in (b"x" * 10, os.urandom(8 * 1024 * 1024)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"%d\n" % len(body) + body)
        await reader.read()
        writer.close()
    server.close()
    await server.wait_closed()
    assert sizes[0] < serve.READ_SIZE  # asyncio's own default
    assert sizes[1] == serve.READ_SIZE


def test_h11_body_extraction_without_copies_parses_the_same(monkeypatch):
    from h11 import _receivebuffer

    cls = _receivebuffer.ReceiveBuffer
    for name in ("maybe_extract_at_most", "__iadd__"):  # both patched: both restored after
        monkeypatch.setattr(cls, name, getattr(cls, name))
    serve._extract_body_without_copies()
    serve._extract_body_without_copies()  # idempotent
    assert getattr(cls.maybe_extract_at_most, "kiapi_fast", False)
    body = os.urandom(300_000)
    for chunked in (False, True):
        conn = h11.Connection(h11.SERVER)
        headers = [("Host", "x"), ("Transfer-Encoding", "chunked")] if chunked else \
            [("Host", "x"), ("Content-Length", str(len(body)))]
        wire = h11.Connection(h11.CLIENT)
        raw = wire.send(h11.Request(method="PUT", target="/", headers=headers)) or b""
        raw += wire.send(h11.Data(data=body[:100_000])) or b""
        raw += wire.send(h11.Data(data=body[100_000:])) or b""
        raw += wire.send(h11.EndOfMessage()) or b""
        got, events = b"", []
        for at in range(0, len(raw), 65_537):  # pieces that cut through headers and chunks
            conn.receive_data(raw[at:at + 65_537])
            while (event := conn.next_event()) is not h11.NEED_DATA:
                events.append(type(event))
                if isinstance(event, h11.Data):
                    got += bytes(event.data)
        assert got == body
        assert events[0] is h11.Request and events[-1] is h11.EndOfMessage


async def test_body_reader_hands_its_buffer_over_and_h11_adopts_it(monkeypatch):
    from h11 import _receivebuffer

    cls = _receivebuffer.ReceiveBuffer
    for name in ("maybe_extract_at_most", "__iadd__"):  # restored after the test
        monkeypatch.setattr(cls, name, getattr(cls, name))
    serve._extract_body_without_copies()
    assert serve._BodyReader.usable()
    reader = serve._BodyReader(limit=serve.READ_SIZE)
    reader.feed_data(b"abc")
    reader.feed_data(b"def")
    first = await reader.read(serve.READ_SIZE)
    assert first == b"abcdef" and type(first) is serve.HandedOver  # the buffer itself
    reader.feed_data(b"0123456789")
    part = await reader.read(4)  # less than is buffered: asyncio's own read (a copy)
    assert part == b"0123" and type(part) is bytes
    waiting = asyncio.ensure_future(reader.read(serve.READ_SIZE))
    assert await waiting == b"456789"
    later = asyncio.ensure_future(reader.read(serve.READ_SIZE))  # nothing buffered: waits
    await asyncio.sleep(0)
    reader.feed_data(b"xyz")
    assert await later == b"xyz"
    reader.feed_eof()
    assert await reader.read(serve.READ_SIZE) == b"" and reader.at_eof()

    request = b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n"
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(serve.HandedOver(request))
    assert type(conn.next_event()) is h11.Request
    handed = serve.HandedOver(b"body!!")
    conn.receive_data(handed)  # adopted: no copy
    event = conn.next_event()
    assert isinstance(event, h11.Data) and event.data is handed
    # a plain bytearray is copied as h11 always did: changing it later changes nothing
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request)
    conn.next_event()
    mine = bytearray(b"body!!")
    conn.receive_data(mine)
    mine[:] = b"XXXXXX"
    event = conn.next_event()
    assert isinstance(event, h11.Data) and bytes(event.data) == b"body!!"


async def test_a_canceled_upload_closes_only_after_its_threads_are_done(tmp_path, monkeypatch):
    """A timeout (a URL input's download) cancels ``feed`` while a block is being written: the
    file and buffers are closed only once that write is over, never under a running thread (its
    fd could by then belong to another upload), and no temp file is left."""
    import threading

    monkeypatch.setattr(ingest, "BLOCK_BYTES", SMALL_BLOCK)
    writing, release, order = threading.Event(), threading.Event(), []
    real_pwrite = ingest.BlockFile._pwrite
    real_close = ingest.BlockFile.close

    def slow_write(self, data, offset):
        if offset == 0:  # only the first block's write is slow
            writing.set()
            release.wait(10)
        real_pwrite(self, data, offset)
        order.append(f"wrote {offset}")

    def close(self):
        real_close(self)
        order.append("closed")

    monkeypatch.setattr(ingest.BlockFile, "_pwrite", slow_write)
    monkeypatch.setattr(ingest.BlockFile, "close", close)
    store = FileStore(tmp_path)

    async def upload():
        async with store.writer() as writer:
            for _ in range(4):  # the third block waits for the first buffer's slow write
                await writer.write(b"x" * SMALL_BLOCK)

    task = asyncio.create_task(upload())
    await asyncio.to_thread(writing.wait, 10)
    await asyncio.sleep(0.05)
    task.cancel()
    asyncio.get_running_loop().call_later(0.5, release.set)
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(release.wait, 10)
    for _ in range(100):
        if "closed" in order:
            break
        await asyncio.sleep(0.02)
    assert order[-1] == "closed" and "wrote 0" in order, order
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
