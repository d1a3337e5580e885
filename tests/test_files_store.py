"""FileStore: layout, atomicity, ids, expiry and the async API."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kiapi_core.errors import NotFound, PayloadTooLarge
from kiapi_core.files.store import STALE_AFTER_S, FileStore, check_id, clean_content_type, clean_filename, valid_id


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "files")


def visible(store: FileStore) -> list[str]:
    return sorted(n for n in os.listdir(store.root) if not n.startswith("."))


def test_json_upload_never_overwrites_its_sidecar(store: FileStore) -> None:
    payload = b'{"this": "is the user\'s content"}'
    stored = store.put_bytes(payload, filename="data.json", content_type="application/json")
    assert store.get(stored.file_id).path.read_bytes() == payload
    assert stored.path.name == f"{stored.file_id}.data.json"
    sidecar = json.loads((store.root / f"{stored.file_id}.json").read_text())
    assert sidecar["record"]["file_id"] == stored.file_id


def test_record_fields(store: FileStore) -> None:
    stored = store.put_bytes(b"abc", filename="a.png", content_type="image/png", meta={"k": 1})
    rec = stored.record
    assert valid_id(rec.file_id) and rec.size == 3 and rec.content_type == "image/png"
    assert rec.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert rec.meta == {"k": 1} and rec.expires_at is None


def test_ids_sort_by_creation_and_list_pages(store: FileStore) -> None:
    ids = [store.put_bytes(b"x", filename=f"{i}.txt").file_id for i in range(5)]
    assert ids == sorted(ids)
    listed = [r.file_id for r in store.list()]
    assert listed == ids[::-1]
    page1 = store.list(limit=2)
    page2 = store.list(limit=2, after=page1[-1].file_id)
    assert [r.file_id for r in page1 + page2] == ids[::-1][:4]
    store.delete(page2[-1].file_id)  # a cursor stays valid after its file is gone
    assert [r.file_id for r in store.list(after=page2[-1].file_id)] == ids[:1]


@pytest.mark.parametrize("bad", ["", "file_", "file_XYZ", "../etc/passwd", "file_" + "a" * 31,
                                 "file_" + "a" * 33, "file_" + "A" * 32, "file_" + "a" * 32 + "\n",
                                 "file_" + "a" * 31 + "/"])
def test_malformed_ids_are_not_found_without_touching_disk(store: FileStore, bad: str) -> None:
    with pytest.raises(NotFound, match="32 lowercase hex"):
        store.get(bad)
    with pytest.raises(NotFound):
        store.delete(bad)


def test_unknown_and_deleted(store: FileStore) -> None:
    with pytest.raises(NotFound):
        store.get("file_" + "0" * 32)
    stored = store.put_bytes(b"x", filename="x.bin")
    store.delete(stored.file_id)
    assert visible(store) == []
    with pytest.raises(NotFound):
        store.delete(stored.file_id)


def test_expiry_and_sweep(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "f", ttl_s=60)
    keep = store.put_bytes(b"k", filename="k.txt", ttl_s=0)
    gone = store.put_bytes(b"g", filename="g.txt")
    assert gone.record.expires_at == pytest.approx(gone.record.created_at + 60)
    assert store.sweep_expired(now=time.time() + 61) == 1
    assert store.exists(keep.file_id) and not store.exists(gone.file_id)
    assert visible(store) == sorted([f"{keep.file_id}.json", keep.path.name])


def test_expired_file_is_not_served_before_the_sweep(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "f", ttl_s=0.01)
    stored = store.put_bytes(b"x", filename="x")
    time.sleep(0.02)
    with pytest.raises(NotFound):
        store.get(stored.file_id)
    assert store.list() == []


def test_crash_leftovers_are_invisible_and_swept(store: FileStore) -> None:
    orphan = store.root / ("file_" + "1" * 32 + ".data.png")  # blob written, sidecar never
    orphan.write_bytes(b"half")
    temp = store.root / ".partial" / "abc.tmp"
    temp.write_bytes(b"partial")
    assert store.list() == []
    with pytest.raises(NotFound):
        store.get("file_" + "1" * 32)
    store.sweep_expired()  # too fresh: could be a write in progress
    assert orphan.exists() and temp.exists()
    store.sweep_expired(now=time.time() + STALE_AFTER_S + 1)
    assert not orphan.exists() and not temp.exists()


def test_tampered_sidecar_cannot_point_outside(store: FileStore, tmp_path: Path) -> None:
    stored = store.put_bytes(b"x", filename="x.txt")
    side = store.root / f"{stored.file_id}.json"
    doc = json.loads(side.read_text())
    doc["blob"] = "../../secret"
    side.write_text(json.dumps(doc))
    with pytest.raises(NotFound):
        store.get(stored.file_id)


def test_put_path_moves_and_copies(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "out.png"
    src.write_bytes(b"png bytes")
    moved = store.put_path(src, content_type="image/png")
    assert not src.exists() and moved.path.read_bytes() == b"png bytes"
    assert moved.filename == "out.png" and moved.path.suffix == ".png"
    src.write_bytes(b"again")
    copied = store.put_path(src, filename="lora.safetensors", move=False)
    assert src.exists() and copied.path.name.endswith(".data.safetensors")
    assert copied.content_type == "application/octet-stream"


def test_filename_and_content_type_cleaning() -> None:
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("C:\\Users\\me\\a.png") == "a.png"
    assert clean_filename('we"ird\r\nname.txt') == "weirdname.txt"
    assert clean_filename("") == "file" and clean_filename("...") == "file"
    assert len(clean_filename("a" * 500 + ".png")) == 200
    assert clean_filename("a" * 500 + ".png").endswith(".png")
    assert clean_content_type("IMAGE/PNG; charset=x") == "image/png"
    assert clean_content_type("text/html\r\nX-Evil: 1", "a.png") == "image/png"
    assert clean_content_type(None, "x.json") == "application/json"
    assert clean_content_type("application/octet-stream", "x.unknownext") == "application/octet-stream"
    assert check_id("file_" + "a" * 32)


async def test_save_stream_and_async_api(store: FileStore) -> None:
    async def chunks():
        for _ in range(4):
            yield b"x" * 1000

    stored = await store.save_stream(chunks(), filename="x.txt", content_type="text/plain", max_bytes=4000)
    assert stored.record.size == 4000
    assert (await store.aget(stored.file_id)).record == stored.record
    assert [r.file_id for r in await store.alist()] == [stored.file_id]
    await store.adelete(stored.file_id)
    assert await store.alist() == []


async def test_save_stream_over_cap_leaves_nothing(store: FileStore) -> None:
    async def chunks():
        for _ in range(10):
            yield b"x" * 1000

    with pytest.raises(PayloadTooLarge):
        await store.save_stream(chunks(), filename="x", max_bytes=2500)
    assert visible(store) == [] and os.listdir(store.root / ".partial") == []


async def test_writer_abort_on_exception(store: FileStore) -> None:
    with pytest.raises(RuntimeError):
        async with store.writer() as w:
            await w.write(b"abc")
            raise RuntimeError("client went away")
    assert visible(store) == [] and os.listdir(store.root / ".partial") == []


def test_a_copy_from_elsewhere_keeps_its_record_and_is_checked_against_it(tmp_path: Path) -> None:
    import errno
    import hashlib

    from kiapi_core.files.models import FileRecord

    origin = FileStore(tmp_path / "origin")
    cache = FileStore(tmp_path / "cache")
    stored = origin.put_bytes(b"abc" * 1000, filename="a.png", content_type="image/png", ttl_s=60)
    copy = cache.put_copy(stored.record, iter([b"abc" * 500, b"abc" * 500]))
    assert cache.get(stored.file_id).record == stored.record and copy.path.read_bytes() == b"abc" * 1000
    assert cache.get(stored.file_id).record.expires_at == stored.record.expires_at  # not the cache's policy
    wrong = FileRecord(file_id=origin.new_id(), filename="b.bin", content_type="application/octet-stream",
                       size=3, created_at=0.0, sha256=hashlib.sha256(b"xyz").hexdigest())
    for chunks in ([b"xy"], [b"abc"]):  # cut short; other bytes of the right size
        with pytest.raises(OSError) as raised:
            cache.put_copy(wrong, iter(chunks))
        assert raised.value.errno == errno.EIO
    assert not cache.exists(wrong.file_id) and os.listdir(cache.root / ".partial") == []
    assert not [n for n in os.listdir(cache.root) if n.startswith(wrong.file_id)]


def test_a_failing_on_publish_leaves_no_file_and_gives_the_quota_back(tmp_path: Path) -> None:
    import asyncio

    from kiapi_core.files.quota import StorageQuota

    seen: list[str] = []

    def refuse(stored) -> None:  # a shared store that could not keep the file
        seen.append(stored.file_id)
        assert stored.path.read_bytes()  # called once the file exists locally
        raise RuntimeError("the shared store is down")

    quota = StorageQuota(10**6, 0, configured=True)
    store = FileStore(tmp_path / "files", quota=quota, on_publish=refuse)
    src = tmp_path / "src.bin"
    src.write_bytes(b"p" * 100)

    async def chunks():
        yield b"s" * 100

    with pytest.raises(RuntimeError):
        store.put_bytes(b"b" * 100, filename="a.bin")
    with pytest.raises(RuntimeError):
        store.put_path(src)
    with pytest.raises(RuntimeError):
        asyncio.run(store.save_stream(chunks(), filename="c.bin"))
    assert len(seen) == 3 and all(store.recent(i) is None and not store.exists(i) for i in seen)
    assert sorted(os.listdir(store.root)) == [".partial"] and os.listdir(store.root / ".partial") == []
    assert (quota.used_bytes, quota.reserved_bytes) == (0, 0)
