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
