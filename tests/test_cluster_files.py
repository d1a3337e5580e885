"""The blob store contract against the local FileStore and PgFileStore, then what only a shared
store does: a file stored by one host is fetched into another's cache, deletes are seen at once,
bytes go in and out in chunks, and the cache stays under its size."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from kiapi_core.cluster.interfaces import BlobStore
from kiapi_core.errors import NotFound, PayloadTooLarge
from kiapi_core.files.store import FileStore


@pytest.fixture
def pool(pg_url):
    from kiapi_core.cluster.pg import connect_pool

    pool = connect_pool(pg_url)
    yield pool
    pool.close()


@pytest.fixture(params=["local", "pg"])
def store(request, tmp_path) -> BlobStore:
    if request.param == "local":
        return FileStore(tmp_path / "files")
    from kiapi_core.cluster.pg import PgFileStore

    return PgFileStore(tmp_path / "files", request.getfixturevalue("pool"))


def test_put_get_list_delete(store):
    one = store.put_bytes(b"one", filename="one.txt", content_type="text/plain", meta={"k": 1})
    src = store.put_bytes(b"x" * 10, filename="src.bin")
    two = store.put_path(src.path, filename="two.bin", move=False)
    assert store.get(one.file_id).path.read_bytes() == b"one" and store.get(one.file_id).record.meta == {"k": 1}
    assert [r.file_id for r in store.list()] == [two.file_id, src.file_id, one.file_id]
    assert [r.file_id for r in store.list(limit=1, after=src.file_id)] == [one.file_id]
    store.delete(one.file_id)
    with pytest.raises(NotFound):
        store.get(one.file_id)
    with pytest.raises(NotFound):
        store.delete(one.file_id)


async def test_streamed_upload_and_its_limit(store):
    async def chunks():
        for i in range(5):
            yield bytes([i]) * (700 * 1024)

    stored = await store.save_stream(chunks(), filename="big.bin")
    data = b"".join(bytes([i]) * (700 * 1024) for i in range(5))
    assert stored.record.size == len(data) and stored.record.sha256 == hashlib.sha256(data).hexdigest()
    assert (await store.aget(stored.file_id)).path.read_bytes() == data
    with pytest.raises(PayloadTooLarge):
        await store.save_stream(chunks(), filename="big.bin", max_bytes=1024 * 1024)
    assert [r.file_id for r in await store.alist()] == [stored.file_id]


@pytest.fixture(params=["local", "pg"])
def ttl_store(request, tmp_path) -> BlobStore:
    """Uploads kept an hour, job outputs a day (KIAPI_FILE_TTL_S, KIAPI_JOB_TTL_S)."""
    if request.param == "local":
        return FileStore(tmp_path / "files", ttl_s=3600, output_ttl_s=86400)
    from kiapi_core.cluster.pg import PgFileStore

    return PgFileStore(tmp_path / "files", request.getfixturevalue("pool"), ttl_s=3600, output_ttl_s=86400)


def test_job_outputs_expire_with_their_job_uploads_after_the_file_ttl(ttl_store):
    upload = ttl_store.put_bytes(b"in", filename="in.txt")
    output = ttl_store.put_bytes(b"out", filename="out.png", meta={"job_id": "job_1"})
    assert upload.record.expires_at - upload.record.created_at == pytest.approx(3600, abs=1)
    assert output.record.expires_at - output.record.created_at == pytest.approx(86400, abs=1)
    assert ttl_store.sweep_expired(now=upload.record.expires_at + 1) == 1
    assert ttl_store.get(output.file_id).path.read_bytes() == b"out"


def test_expiry(store):
    stored = store.put_bytes(b"soon", filename="a.txt", ttl_s=60)
    assert store.sweep_expired(now=stored.record.expires_at + 1) == 1
    with pytest.raises(NotFound):
        store.get(stored.file_id)


def test_a_file_stored_on_one_host_is_read_deleted_and_evicted_on_another(tmp_path, pool):
    from kiapi_core.cluster.pg import PgFileStore

    a = PgFileStore(tmp_path / "a", pool)
    b = PgFileStore(tmp_path / "b", pool, cache_gb=3.5 / 1024)  # a 3.5 MiB cache
    data = os.urandom(3 * 1024 * 1024 + 5)  # four chunks
    stored = a.put_bytes(data, filename="r.bin")
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM kiapi_file_chunks WHERE file_id = %s",
                            (stored.file_id,)).fetchone()[0] == 4
    fetched = b.get(stored.file_id)
    assert fetched.path.parent == tmp_path / "b" and fetched.path.read_bytes() == data
    assert fetched.record == stored.record
    second = a.put_bytes(b"y" * (1024 * 1024), filename="s.bin")
    b.get(second.file_id)
    os.utime(b.get(second.file_id).path, (1, 1))       # the least recently used copy ...
    b.pin([stored.file_id])
    b.sweep_expired()
    assert b.get(stored.file_id).path.exists()          # ... but the pinned one stays
    b.unpin([stored.file_id])
    os.utime(b.get(second.file_id).path)
    os.utime(b.get(stored.file_id).path, (10, 10))  # now the older one (mtimes may be coarse)
    b.sweep_expired()                                   # 4 MiB > 3.5 MiB: the older copy goes
    assert not (tmp_path / "b" / f"{stored.file_id}.json").exists()
    assert b.get(stored.file_id).path.read_bytes() == data  # fetched again from the database
    a.delete(stored.file_id)
    with pytest.raises(NotFound):
        b.get(stored.file_id)
    b.sweep_expired()
    assert not (tmp_path / "b" / f"{stored.file_id}.json").exists()
    assert asyncio.run(b.alist()) == [second.record]


# --- KIAPI_MAX_STORAGE_GB over the database's bytes --------------------------------------------

async def test_the_storage_quota_counts_the_files_of_every_host_in_the_database(kiapi_client_factory, pg_url):
    import kiapi_echo

    cluster = {"plugins": [kiapi_echo], "cluster_url": pg_url, "max_storage_gb": 0.001}  # 1 MB
    async with (kiapi_client_factory(cluster_host_id="a", **cluster) as a,
                kiapi_client_factory(cluster_host_id="b", **cluster) as b):
        first = await a.upload(os.urandom(600_000), "a.bin")
        # host B stored nothing itself: the limit is on the database's bytes, all hosts together
        r = await b.post("/v1/files", files={"file": ("b.bin", os.urandom(600_000), "application/octet-stream")})
        assert r.status_code == 507 and r.json()["code"] == "insufficient_storage", r.text
        body = r.json()
        assert body["used_bytes"] == 600_000 and body["limit_bytes"] == 1_000_000
        assert "KIAPI_MAX_STORAGE_GB" in body["detail"] and "DELETE /v1/files/" in body["detail"]
        # now that B's view is current, a declared length over the limit is refused before any byte
        r = await b.put("/v1/files?filename=c.bin", content=b"x" * 500_000)
        assert r.status_code == 507 and r.json()["code"] == "insufficient_storage", r.text
        assert [f["file_id"] for f in (await b.get("/v1/files")).json()["data"]] == [first]
        assert os.listdir(b.host.files.root / ".partial") == []
        assert not [n for n in os.listdir(b.host.files.root) if n.startswith("file_")]  # nothing left behind
        # an artifact that would pass the quota fails its job with 507, not 500
        r = await b.post("/v1/text/echo/render", json={"text": "x" * 50_000, "repeat": 10})
        assert r.status_code == 507 and r.json()["code"] == "insufficient_storage", r.text[:300]
        # a delete on either host frees the space for all
        assert (await b.delete(f"/v1/files/{first}")).status_code == 200
        assert (await a.post("/v1/text/echo/render", json={"text": "x" * 50_000, "repeat": 10})).status_code == 200
        assert (await b.put("/v1/files?filename=c.bin", content=b"x" * 400_000)).status_code == 201


def test_two_hosts_storing_at_once_cannot_both_pass_the_quota(tmp_path, pool):
    from concurrent.futures import ThreadPoolExecutor

    from kiapi_core.cluster.pg import PgFileStore
    from kiapi_core.errors import InsufficientStorage

    hosts = [PgFileStore(tmp_path / name, pool, max_storage_gb=0.001) for name in "abcd"]

    def store(i: int) -> bool:
        try:
            hosts[i].put_bytes(os.urandom(300_000), filename=f"{i}.bin")
        except InsufficientStorage:
            return False
        return True

    with ThreadPoolExecutor(4) as ex:
        stored = list(ex.map(store, range(4)))
    assert sum(stored) == 3  # 3 × 300 kB fit in 1 MB, a 4th does not, whoever comes last
    with pool.connection() as conn:
        total = conn.execute("SELECT sum((record->>'size')::bigint), bool_and(complete) FROM kiapi_files").fetchone()
    assert total == (900_000, True)
    loser = hosts[stored.index(False)]
    assert not [n for n in os.listdir(loser.root) if n.startswith("file_")]


def test_the_cache_is_bounded_as_files_are_fetched_not_only_at_the_sweep(tmp_path, pool):
    import time

    from kiapi_core.cluster.pg import PgFileStore
    from kiapi_core.files.cache import IN_USE_S

    a = PgFileStore(tmp_path / "a", pool)
    b = PgFileStore(tmp_path / "b", pool, cache_gb=1.5 / 1024)  # a 1.5 MiB cache
    one, two = (a.put_bytes(bytes([i]) * (1024 * 1024), filename=f"{i}.bin") for i in range(2))
    long_ago = time.time() - 2 * IN_USE_S
    os.utime(b.get(one.file_id).path, (long_ago, long_ago))
    b.get(two.file_id)  # 2 MiB > 1.5 MiB: the idle copy of `one` goes now
    assert sorted(n for n in os.listdir(tmp_path / "b") if n.endswith(".json")) == [f"{two.file_id}.json"]
    assert b.get(one.file_id).path.read_bytes() == bytes([0]) * (1024 * 1024)  # fetched again when needed


def test_a_full_database_disk_is_507_and_leaves_no_row_or_copy(tmp_path, pool, monkeypatch):
    import psycopg

    from kiapi_core.cluster.pg import PgFileStore
    from kiapi_core.errors import InsufficientStorage

    store = PgFileStore(tmp_path / "a", pool)  # no KIAPI_MAX_STORAGE_GB: the database's disk is the limit

    def full(conn, stored):  # what PostgreSQL answers when it cannot extend a table file
        raise psycopg.errors.DiskFull("could not extend file: No space left on device")

    monkeypatch.setattr(PgFileStore, "_copy_in", staticmethod(full))
    with pytest.raises(InsufficientStorage) as raised:
        store.put_bytes(b"x" * 1000, filename="a.bin")
    assert raised.value.status == 507 and "database's disk is full" in raised.value.detail
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM kiapi_files").fetchone()[0] == 0
    assert sorted(os.listdir(store.root)) == [".partial"] and store.list() == []
