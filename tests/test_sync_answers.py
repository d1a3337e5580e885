"""Sync raw-bytes answers served from memory right after the job: same headers as a download."""

from __future__ import annotations

import pytest

import kiapi_echo


@pytest.fixture
async def client(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], demo=False) as http:
        yield http


async def test_sync_answer_matches_the_download(client) -> None:
    r = await client.post("/v1/text/echo/render", json={"text": "hello", "repeat": 3})
    assert r.status_code == 200 and r.content == b"hello" * 3
    download = await client.get(f"/v1/files/{r.headers['x-kiapi-file-id']}/download")
    for header in ("etag", "content-type", "content-length", "last-modified", "content-security-policy"):
        assert r.headers[header] == download.headers[header], header
    assert r.headers["content-disposition"].startswith("inline;")


async def test_sync_answer_honours_range_and_if_none_match(client) -> None:
    first = await client.post("/v1/text/echo/render", json={"text": "abcdef"})
    etag = first.headers["etag"]
    ranged = await client.post("/v1/text/echo/render", json={"text": "abcdef"}, headers={"Range": "bytes=1-3"})
    assert ranged.status_code == 206 and ranged.content == b"bcd"
    assert ranged.headers["content-range"] == "bytes 1-3/6"
    cached = await client.post("/v1/text/echo/render", json={"text": "abcdef"}, headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b""


async def test_an_answered_job_is_already_committed_to_the_job_store(kiapi_client_factory, tmp_path) -> None:
    """Writes go behind the manager's lock, but a job's end is committed before it is answered
    (so an answered job survives kill -9)."""
    import sqlite3

    data = tmp_path / "data"
    async with kiapi_client_factory(plugins=[kiapi_echo], demo=False, data_dir=str(data)) as http:
        for text in ("one", "two", "three"):
            r = await http.post("/v1/text/echo/render", json={"text": text})
            assert r.status_code == 200
            with sqlite3.connect(data / "jobs.sqlite3") as db:  # a second reader, as after a crash
                row = db.execute("SELECT status FROM jobs WHERE id = ?", (r.headers["x-kiapi-job-id"],)).fetchone()
            assert row == ("succeeded",)
