"""What the file store syncs to disk, and when (docs/reliability.md, "Files on disk")."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kiapi_core.errors import NotFound
from kiapi_core.files import durability
from kiapi_core.files import store as store_module
from kiapi_core.files.store import FileStore


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every data sync and directory sync the store makes, by kind."""
    calls: list[str] = []
    monkeypatch.setattr(durability, "sync_data", lambda fd: calls.append("data"))
    monkeypatch.setattr(durability, "fsync_dir", lambda path: calls.append("dir"))
    return calls


def test_one_data_sync_and_one_directory_sync_per_file(tmp_path: Path, syncs: list[str]) -> None:
    store = FileStore(tmp_path / "files")
    stored = store.put_bytes(b"png bytes", filename="a.png")
    assert syncs == ["data", "dir"]
    source = tmp_path / "out.bin"
    source.write_bytes(b"x" * 1000)
    syncs.clear()
    store.put_path(source, filename="out.bin")
    assert syncs == ["data", "dir"]
    assert store.get(stored.file_id).path.read_bytes() == b"png bytes"
    # The blob is written under its final name and only the sidecar is renamed in: nothing is
    # left in .partial/.
    assert list((store.root / ".partial").iterdir()) == []


async def test_an_upload_is_synced_before_it_is_answered(tmp_path: Path, syncs: list[str]) -> None:
    store = FileStore(tmp_path / "files")
    async with store.writer() as writer:
        await writer.write(b"y" * 3_000_000)
        stored = await writer.commit(filename="big.bin")
    assert syncs == ["data", "dir"] and stored.record.size == 3_000_000


def test_deferred_syncs_publish_at_once_and_sync_later_on_that_thread(tmp_path: Path, syncs: list[str]) -> None:
    store = FileStore(tmp_path / "files")
    seen: dict[str, object] = {}

    def worker() -> None:
        store.defer_syncs()
        first = store.put_bytes(b"one", filename="1.png")
        source = tmp_path / "two.bin"
        source.write_bytes(b"two")
        second = store.put_path(source, filename="2.bin")
        seen["before"] = list(syncs)
        seen["visible"] = [store.get(first.file_id).path.read_bytes(), store.get(second.file_id).record.size]
        store.sync_deferred()
        seen["after"] = list(syncs)
        store.sync_deferred()  # nothing left: no sync
        seen["again"] = list(syncs)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["before"] == [] and seen["visible"] == [b"one", 3]
    assert seen["after"] == ["data", "data", "dir"] and seen["again"] == seen["after"]
    store.put_bytes(b"other thread", filename="3.txt")  # this thread never deferred
    assert syncs[-2:] == ["data", "dir"]


def test_a_record_whose_blob_is_not_its_size_is_ignored(tmp_path: Path) -> None:
    """What a power cut can leave when a blob's bytes did not reach the disk."""
    store = FileStore(tmp_path / "files")
    stored = store.put_bytes(b"complete bytes", filename="a.bin")
    with open(stored.path, "r+b") as fh:
        fh.truncate(3)
    with pytest.raises(NotFound):
        store.get(stored.file_id)
    assert [r.file_id for r in store.list()] == []
    os.truncate(stored.path, 0)
    assert not store.exists(stored.file_id)


def test_recent_small_files_are_kept_in_memory_until_deleted(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    small = store.put_bytes(b"s" * 100, filename="s.bin")
    big = store.put_bytes(b"b" * (store_module.RECENT_BYTES_MAX + 1), filename="b.bin")
    assert store.recent(small.file_id) == (small, b"s" * 100) and store.recent(big.file_id) == (big, None)
    store.delete(small.file_id)
    assert store.recent(small.file_id) is None
