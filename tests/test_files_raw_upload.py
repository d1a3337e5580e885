"""Raw-body uploads (``PUT``/``POST /v1/files`` with the file as the body), through HTTP."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from starlette.applications import Starlette

from kiapi_core.errors import KiapiError
from kiapi_core.files.routes import routes
from kiapi_core.files.store import FileStore
from kiapi_core.http.responses import error_response
from kiapi_core.settings import Settings

MiB = 1024 * 1024


async def _render(request, exc):  # starlette handler signature
    return error_response(exc)


@pytest.fixture
def files_app(tmp_path: Path):
    settings = Settings(data_dir=str(tmp_path), max_upload_mb=2)
    store = FileStore(tmp_path / "files")
    app = Starlette(routes=routes(), exception_handlers={KiapiError: _render})
    app.state.host = SimpleNamespace(settings=settings, files=store)
    return app, store


@pytest.fixture
async def client(files_app):
    app, _ = files_app
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kiapi") as c:
        yield c


async def test_put_with_filename_query_stores_the_body(client) -> None:
    data = os.urandom(300_000)
    r = await client.put("/v1/files", params={"filename": "photo.png"}, content=data)
    assert r.status_code == 201, r.text
    record = r.json()
    assert record["filename"] == "photo.png" and record["content_type"] == "image/png"
    assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["meta"] == {"source": "upload"}
    assert r.headers["location"] == f"/v1/files/{record['file_id']}"
    download = await client.get(f"/v1/files/{record['file_id']}/download")
    assert download.content == data and download.headers["etag"] == f'"{record["sha256"]}"'


async def test_post_octet_stream_with_content_disposition(client) -> None:
    r = await client.post("/v1/files", content=b"weights", headers={
        "content-type": "application/octet-stream",
        "content-disposition": "attachment; filename=\"x.bin\"; filename*=UTF-8''l%C3%B6ra.safetensors"})
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "löra.safetensors"
    assert r.json()["content_type"] == "application/octet-stream"


async def test_declared_type_wins_and_a_name_is_made_up_when_missing(client) -> None:
    r = await client.put("/v1/files", content=b"\x89PNG....", headers={"content-type": "image/png"})
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "upload.png" and r.json()["content_type"] == "image/png"
    r = await client.post("/v1/files", content=b"bytes", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 201 and r.json()["filename"] == "upload"


async def test_json_body_without_a_name_is_still_415(client) -> None:
    r = await client.post("/v1/files", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415 and "curl -T" in r.json()["detail"]
    named = await client.post("/v1/files?filename=data.json", content=b"{}",
                              headers={"content-type": "application/json"})
    assert named.status_code == 201 and named.json()["content_type"] == "application/json"


async def test_raw_upload_over_the_cap_is_413_and_leaves_nothing(client, files_app) -> None:
    _, store = files_app
    big = b"x" * (2 * MiB + 1)
    declared = await client.put("/v1/files?filename=big.bin", content=big)
    assert declared.status_code == 413

    async def streamed():
        for _ in range(3):
            yield b"y" * MiB

    r = await client.put("/v1/files?filename=big.bin", content=streamed())  # chunked, no length
    assert r.status_code == 413 and "KIAPI_MAX_UPLOAD_MB" in r.json()["detail"]
    assert store.list() == [] and list((store.root / ".partial").iterdir()) == []


async def test_raw_upload_over_the_storage_quota_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    from kiapi_core.files.quota import StorageQuota

    settings = Settings(data_dir=str(tmp_path), max_upload_mb=8)
    store = FileStore(tmp_path / "files", quota=StorageQuota(MiB, 0, configured=True))
    app = Starlette(routes=routes(), exception_handlers={KiapiError: _render})
    app.state.host = SimpleNamespace(settings=settings, files=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kiapi") as client:
        declared = await client.put("/v1/files?filename=big.bin", content=b"x" * (2 * MiB))
        assert declared.status_code == 507, declared.text

        async def streamed():
            for _ in range(2):
                yield b"y" * MiB

        r = await client.put("/v1/files?filename=big.bin", content=streamed())
        assert r.status_code == 507 and r.json()["code"] == "insufficient_storage"
        small = await client.put("/v1/files?filename=small.bin", content=b"z" * 1000)
        assert small.status_code == 201
    assert [f.filename for f in store.list()] == ["small.bin"]
    assert list((store.root / ".partial").iterdir()) == []
